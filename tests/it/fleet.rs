//! `provision fleet` against three booted machines, each with its own real
//! sshd on a loopback port, through an operator-side ssh config with pinned
//! host keys: status (table and JSON), actions on one machine only, a
//! powered-off machine, a changed host key, the config read from its
//! repository, and an inventory Ansible can use.

use testkit as common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::container::Machine;
use common::{GitDaemon, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_provision");
const NAMES: [&str; 3] = ["fleet1", "fleet2", "fleet3"];

/// The operator's side: keys, known_hosts and an ssh config.
struct Operator {
    dir: tempfile::TempDir,
}

impl Operator {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn fleet(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("fleet")
            .arg("-c")
            .arg(self.path("config.toml"))
            .arg("--ssh-config")
            .arg(self.path("ssh_config"))
            .args(["--remote-command", BIN, "--connect-timeout", "3s"])
            .args(args)
            .output()
            .expect("running provision fleet")
    }

    fn status(&self, extra: &[&str]) -> serde_json::Value {
        let mut args = extra.to_vec();
        args.extend(["status", "--json"]);
        let out = self.fleet(&args);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("fleet status JSON: {e}\n{}", common::output_text(&out)))
    }
}

/// Runs `fleet status` against fleet1 with an agent running and an ssh
/// config saying `ForwardAgent yes`, and reads on the machine whether its
/// side of the session had an agent socket.
fn agent_stays_home(op: &Operator, m: &Machine) {
    let sock = op.path("agent.sock");
    let agent = Command::new("ssh-agent")
        .arg("-a")
        .arg(&sock)
        .output()
        .expect("ssh-agent");
    assert!(agent.status.success(), "{}", common::output_text(&agent));
    let base = fs::read_to_string(op.path("ssh_config")).expect("ssh_config");
    let forwarding = op.path("ssh_config_forwarding");
    fs::write(
        &forwarding,
        format!("ForwardAgent yes\nForwardX11 yes\n{base}"),
    )
    .expect("ssh_config");
    let remote = format!("sh -c 'printenv SSH_AUTH_SOCK > /tmp/agent; exec {BIN} \"$@\"' sh");
    let seen = |extra: &[&str]| {
        let out = Command::new(BIN)
            .arg("fleet")
            .arg("-c")
            .arg(op.path("config.toml"))
            .arg("--ssh-config")
            .arg(&forwarding)
            .args(["--remote-command", &remote, "--connect-timeout", "3s"])
            .args(extra)
            .args(["--machines", "fleet1", "status"])
            .env("SSH_AUTH_SOCK", &sock)
            .output()
            .expect("provision fleet");
        assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
        m.sh("cat /tmp/agent; true")
    };
    assert_eq!(seen(&[]).trim(), "", "the agent was forwarded");
    assert!(
        seen(&["--ssh-option", "ForwardAgent=yes"]).contains("/tmp/ssh-"),
        "an explicit --ssh-option ForwardAgent=yes did not forward the agent"
    );
    let pid = String::from_utf8_lossy(&agent.stdout)
        .split(['=', ';'])
        .skip_while(|w| w.trim() != "SSH_AGENT_PID")
        .nth(1)
        .map(str::to_string)
        .unwrap_or_default();
    let _ = Command::new("kill").arg(pid.trim()).status();
}

fn config(up: &Upstream, names: &[&str]) -> String {
    format!(
        "[[services]]\nmachine = {names:?}\nservice = \"web\"\n\
         upstream = \"{}\"\naction = \"reload\"\ndirs = [ {{ local = \"/etc/web\", link = \"web\" }} ]\n",
        up.url()
    )
}

/// Boots a machine running `config`, its web unit and its own sshd on
/// `port` with `host_key`, accepting the operator's key.
fn machine(name: &str, config: &str, op: &Operator, port: u16) -> Machine {
    let m = Machine::boot(name);
    m.put(
        "/etc/systemd/system/web.service",
        "[Service]\nExecStart=/bin/sleep infinity\nExecReload=/bin/true\n",
        0o644,
    );
    m.put("/etc/provision/config.toml", config, 0o644);
    m.sh("systemctl daemon-reload && systemctl start web");
    m.serve_ssh(
        &op.path(&format!("{name}_host")),
        &op.path("operator.pub"),
        port,
    );
    m.sh(&format!("{BIN} sync"));
    m
}

#[test]
fn the_fleet_is_seen_and_steered_over_ssh_one_machine_at_a_time() {
    if !common::require_tool("git-daemon")
        || !common::require_tool("sshd")
        || !common::container::require_containers()
    {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    let first = up.commit("main", &[("web/web.conf", Some("one\n"))], "one");
    let text = config(&up, &NAMES);
    up.commit(
        "main",
        &[("provision/config.toml", Some(&text))],
        "config in git",
    );
    let first_config = up.head("main");
    let (op, mut machines, known) = fleet_of(&NAMES, &text);

    // Every machine, with its deployed commit.
    let out = op.fleet(&["status"]);
    let table = common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{table}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("asked 3 machine(s) over ssh in"),
        "the sweep's time is told: {table}"
    );
    for name in NAMES {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(name) && l.contains(&first_config[..10])),
            "{table}"
        );
    }
    assert!(table.contains("web: 3/3 at"), "{table}");
    let doc = op.status(&[]);
    assert_eq!(doc["schema"], 1);
    assert_eq!(doc["machines"].as_array().map(Vec::len), Some(3));
    for m in doc["machines"].as_array().expect("machines") {
        assert_eq!(m["reachable"], true, "{m}");
        assert_eq!(
            m["status"]["services"][0]["deployed"]["commit"],
            first_config.as_str()
        );
    }
    assert_eq!(doc["services"][0]["at_head"], 3);

    // Freeze one machine only.
    let out = op.fleet(&["--machines", "fleet2", "freeze", "web", "--reason", "test"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let doc = op.status(&[]);
    let states: Vec<&str> = doc["machines"]
        .as_array()
        .expect("machines")
        .iter()
        .map(|m| m["status"]["services"][0]["state"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(states, ["following", "frozen", "following"]);

    // A new commit: a fleet-wide sync moves all but the frozen one.
    let second = up.commit("main", &[("web/web.conf", Some("two\n"))], "two");
    let out = op.fleet(&["--yes", "sync"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    assert_eq!(
        machines[0].read("/etc/web/web.conf").as_deref(),
        Some("two\n")
    );
    assert_eq!(
        machines[1].read("/etc/web/web.conf").as_deref(),
        Some("one\n")
    );
    let out = op.fleet(&["status"]);
    let table = common::output_text(&out);
    assert!(table.contains("web: 2/3 at"), "{table}");
    assert!(table.contains("1 frozen behind"), "{table}");

    // Roll one machine back; bring two forward.
    let out = op.fleet(&["--machines", "fleet1", "rollback", "web", "HEAD~1"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    assert_eq!(
        machines[0].read("/etc/web/web.conf").as_deref(),
        Some("one\n")
    );
    assert_eq!(
        machines[2].read("/etc/web/web.conf").as_deref(),
        Some("two\n")
    );
    let out = op.fleet(&["--machines", "fleet1,fleet2", "--yes", "forward", "web"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    for m in &machines {
        assert_eq!(m.read("/etc/web/web.conf").as_deref(), Some("two\n"));
    }
    let _ = (first, second);

    // The same view from a real Prometheus scraping each machine's
    // node_exporter (textfile collector), without SSH.
    if common::require_tool("prometheus") && common::require_tool("prometheus-node-exporter") {
        let head = up.head("main");
        let watch = Watch::start(&op, &NAMES, &machines);
        let url = watch.url.clone();
        let until = Instant::now() + Duration::from_secs(60);
        let doc = loop {
            let out = Command::new(BIN)
                .args(["fleet", "-c"])
                .arg(op.path("config.toml"))
                .args(["status", "--json", "--prometheus", &url])
                .output()
                .expect("fleet status --prometheus");
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let ready = doc["machines"].as_array().is_some_and(|ms| {
                ms.len() == 3
                    && ms
                        .iter()
                        .all(|m| m["status"]["services"][0]["deployed"]["commit"] == head.as_str())
            });
            if ready {
                assert_eq!(out.status.code(), Some(0));
                break doc;
            }
            assert!(
                Instant::now() < until,
                "Prometheus never showed the fleet: {}",
                common::output_text(&out)
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        assert_eq!(doc["services"][0]["at_head"], 3, "{doc}");
        let out = Command::new(BIN)
            .args(["fleet", "-c"])
            .arg(op.path("config.toml"))
            .args(["status", "--prometheus", &url])
            .output()
            .expect("fleet status --prometheus");
        let table = common::output_text(&out);
        assert!(table.contains("web: 3/3 at"), "{table}");
        drop(watch);
    }

    // Several machines without --yes and without a terminal: refused.
    let out = op.fleet(&["freeze", "web"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));

    // The config straight from its repository.
    let out = Command::new(BIN)
        .arg("--state-dir")
        .arg(op.path("state"))
        .args(["fleet", "--repo", &up.url(), "--ssh-config"])
        .arg(op.path("ssh_config"))
        .args(["--remote-command", BIN, "inventory", "--format", "json"])
        .output()
        .expect("fleet --repo");
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(NAMES.iter().all(|n| text.contains(n)), "{text}");

    // Ansible takes the inventory.
    if common::require_tool("ansible") {
        let inv = op.path("inventory.sh");
        fs::write(
            &inv,
            format!(
                "#!/bin/sh\nexec {BIN} fleet -c {} inventory --format ansible\n",
                op.path("config.toml").display()
            ),
        )
        .expect("inventory script");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "chmod +x {i} && ansible-inventory -i {i} --list",
                i = inv.display()
            ))
            .output()
            .expect("ansible-inventory");
        let text = common::output_text(&out);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("fleet3") && text.contains("\"web\""),
            "{text}"
        );
        let out = Command::new("ansible")
            .args(["-i"])
            .arg(&inv)
            .args(["all", "-m", "ping", "-e"])
            .arg(format!(
                "ansible_ssh_common_args='-F {}' ansible_python_interpreter=/usr/bin/python3",
                op.path("ssh_config").display()
            ))
            .env("ANSIBLE_HOST_KEY_CHECKING", "True")
            .output()
            .expect("ansible ping");
        let text = common::output_text(&out);
        assert!(out.status.success(), "{text}");
        assert_eq!(text.matches("SUCCESS").count(), 3, "{text}");
    }

    // A changed host key is refused with ssh's own words.
    let other = op.path("other_host");
    common::ssh_keygen(&other);
    let swapped = known.replace(
        &known.lines().next().expect("a line").to_string(),
        &format!("fleet1 {}", common::public_key(&op.path("other_host.pub"))),
    );
    fs::write(op.path("known_hosts"), swapped).expect("known_hosts");
    let out = op.fleet(&["--machines", "fleet1", "status"]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("Host key verification failed"), "{text}");
    fs::write(op.path("known_hosts"), &known).expect("known_hosts");

    // An ssh config that forwards the agent everywhere: the machine still
    // gets no socket back to it, unless the operator asks on the command
    // line.
    agent_stays_home(&op, &machines[0]);

    // One machine powered off: reported, the others still answer.
    machines[2].poweroff();
    let out = op.fleet(&["status"]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("fleet3") && l.contains("unreachable")),
        "{text}"
    );
    assert!(text.contains("1 unreachable"), "{text}");
    let doc = op.status(&[]);
    assert_eq!(doc["machines"][0]["reachable"], true);
    assert_eq!(doc["machines"][2]["reachable"], false);
}

/// Boots `names`, each running `text` with its own sshd, and the
/// operator's side that reaches them; returns the known_hosts text too.
fn fleet_of(names: &[&str], text: &str) -> (Operator, Vec<Machine>, String) {
    let op = Operator {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    common::ssh_keygen(&op.path("operator"));
    fs::write(op.path("config.toml"), text).expect("writing the config");
    let mut ssh_config = String::new();
    let mut known = String::new();
    let mut machines = Vec::new();
    for name in names {
        common::ssh_keygen(&op.path(&format!("{name}_host")));
        let port = common::free_port();
        let host_key = common::public_key(&op.path(&format!("{name}_host.pub")));
        known.push_str(&format!("{name} {host_key}\n"));
        ssh_config.push_str(&format!(
            "Host {name}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {key}\n  \
             IdentitiesOnly yes\n  HostKeyAlias {name}\n  UserKnownHostsFile {kh}\n  \
             GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  LogLevel ERROR\n",
            key = op.path("operator").display(),
            kh = op.path("known_hosts").display(),
        ));
        machines.push(machine(name, text, &op, port));
    }
    fs::write(op.path("known_hosts"), &known).expect("known_hosts");
    fs::write(op.path("ssh_config"), &ssh_config).expect("ssh_config");
    (op, machines, known)
}

/// A real Prometheus scraping each machine's node_exporter (textfile
/// collector, on its own loopback port) every second, with `instance` set
/// to the machine's name. Stopped when dropped.
struct Watch {
    url: String,
    node_exporters: Vec<std::process::Child>,
    prometheus: Option<std::process::Child>,
}

impl Watch {
    fn start(op: &Operator, names: &[&str], machines: &[Machine]) -> Watch {
        let mut node_exporters = Vec::new();
        let mut targets = String::new();
        for (name, m) in names.iter().zip(machines) {
            let port = common::free_port();
            node_exporters.push(
                Command::new("prometheus-node-exporter")
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .args(["--collector.disable-defaults", "--collector.textfile"])
                    .arg(format!(
                        "--collector.textfile.directory=/proc/{}/root/var/lib/prometheus/node-exporter",
                        m.pid()
                    ))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("node_exporter"),
            );
            targets.push_str(&format!(
                "      - targets: ['127.0.0.1:{port}']\n        labels: {{instance: {name}}}\n"
            ));
        }
        let prom_port = common::free_port();
        let yml = op.path(&format!("prometheus-{prom_port}.yml"));
        fs::write(
            &yml,
            format!("global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: node\n    static_configs:\n{targets}"),
        )
        .expect("prometheus.yml");
        let prometheus = Command::new("prometheus")
            .arg(format!("--config.file={}", yml.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                op.path(&format!("tsdb-{prom_port}")).display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus");
        Watch {
            url: format!("http://127.0.0.1:{prom_port}"),
            node_exporters,
            prometheus: Some(prometheus),
        }
    }

    /// Stops Prometheus only (the node_exporters go on).
    fn stop_prometheus(&mut self) {
        if let Some(mut p) = self.prometheus.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop_prometheus();
        for c in &mut self.node_exporters {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Writes `text` to `path` as an executable script.
fn script(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    common::run(Command::new("chmod").arg("755").arg(path));
}

/// A stand-in for ssh that runs the remote command here, so the fan-out
/// and its output can be checked without machines.
fn stand_in(dir: &Path) -> PathBuf {
    let path = dir.join("fake-ssh");
    script(
        &path,
        "#!/bin/sh\nwhile [ \"$1\" != \"--\" ]; do shift; done\nshift; shift\nexec sh -c \"$1\"\n",
    );
    path
}

#[test]
fn a_terminal_sees_progress_and_a_pipe_does_not() {
    if !common::require_tool("script") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("config.toml");
    fs::write(
        &cfg,
        "[[services]]\nmachine = [\"a\", \"b\", \"c\"]\nservice = \"web\"\nupstream = \"git://127.0.0.1:9/x\"\n\
         dirs = [ { local = \"/srv/web\", link = \"web\" } ]\n",
    )
    .expect("config");
    let ssh = stand_in(dir.path());
    let remote = format!(
        "{BIN} -c {} --state-dir {}",
        cfg.display(),
        dir.path().join("state").display()
    );
    let fleet = format!(
        "{BIN} fleet -c {} --ssh-command {} --remote-command '{remote}' status",
        cfg.display(),
        ssh.display()
    );
    let out = Command::new("script")
        .args(["-qec", &fleet, "/dev/null"])
        .output()
        .expect("script");
    let text = common::output_text(&out);
    assert!(text.contains("3/3 machines"), "{text}");
    assert!(text.contains("web: 0/3 at"), "{text}");
    let out = Command::new("sh")
        .args(["-c", &fleet])
        .output()
        .expect("sh");
    let text = common::output_text(&out);
    assert!(
        !text.contains("machines\r") && !text.contains("/3 machines"),
        "{text}"
    );
    assert!(text.contains("web: 0/3 at"), "{text}");
}

/// A machine that answers with terminal escape sequences (its own
/// provision compromised, or a shell profile printing them) is shown
/// escaped in `fleet history` and `fleet diff`, answer and failure alike.
#[test]
fn escape_sequences_from_a_machine_never_reach_the_operators_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("config.toml");
    fs::write(
        &cfg,
        "[[services]]\nmachine = [\"a\", \"b\"]\nservice = \"web\"\nupstream = \"git://127.0.0.1:9/x\"\n\
         dirs = [ { local = \"/srv/web\", link = \"web\" } ]\n",
    )
    .expect("config");
    let ssh = stand_in(dir.path());
    let hostile = dir.path().join("hostile");
    script(
        &hostile,
        "#!/bin/sh\nprintf 'x \\033]0;owned\\007\\033[2J\\rforged\\n'\n\
         printf 'err \\033[31mred\\n' >&2\n[ \"$1\" = history ]\n",
    );
    for verb in ["history", "diff"] {
        let out = Command::new(BIN)
            .arg("-c")
            .arg(&cfg)
            .args(["fleet", "--ssh-command"])
            .arg(&ssh)
            .arg("--remote-command")
            .arg(&hostile)
            .args([verb, "web"])
            .output()
            .expect("fleet");
        let seen = common::output_text(&out);
        assert!(seen.contains("x \\u{1b}]0;owned\\u{7}"), "{verb}: {seen}");
        for raw in ['\u{1b}', '\u{7}', '\r'] {
            assert!(!seen.contains(raw), "{verb}: {raw:?} shown raw: {seen:?}");
        }
    }
}

const ROLL: [&str; 3] = ["roll1", "roll2", "roll3"];

fn rollout_config(up: &Upstream, staging: &str) -> String {
    format!(
        "[global]\ncanary = [\"roll1\"]\n{staging}\n\n[[services]]\nmachine = [\"roll1\", \"roll2\", \"roll3\"]\n\
         service = \"web\"\nupstream = \"{}\"\naction = \"reload\"\n\
         health = \"! grep -q bad /etc/web/web.conf\"\nhealth_timeout = \"3s\"\n\
         dirs = [ {{ local = \"/etc/web\", link = \"web\" }} ]\n",
        up.url()
    )
}

/// Commits `web/web.conf` with `text`, again with a counter until every
/// machine of `places` has at least its place in the commit's rollout, so
/// that the waits below are long enough to watch.
fn commit_placed(up: &Upstream, text: &str, places: &[(&str, f64)]) -> String {
    for i in 0..50 {
        let c = up.commit(
            "main",
            &[("web/web.conf", Some(&format!("{text} {i}\n")))],
            text,
        );
        let id: provision::CommitId = c.parse().expect("commit id");
        if places
            .iter()
            .all(|(m, min)| provision::rollout_position(m, "web", id).fraction() >= *min)
        {
            return c;
        }
    }
    panic!("no commit placed {places:?} in 50 tries");
}

fn service_status(m: &Machine) -> serde_json::Value {
    let out = m.sh(&format!("{BIN} status --json"));
    let doc: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    doc["services"][0].clone()
}

fn deployed(m: &Machine) -> String {
    service_status(m)["deployed"]["commit"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[test]
fn a_staged_rollout_reaches_the_canary_first_then_each_machine_at_its_time() {
    if !common::require_tool("git-daemon")
        || !common::require_tool("sshd")
        || !common::require_tool("prometheus")
        || !common::require_tool("prometheus-node-exporter")
        || !common::container::require_containers()
    {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    up.commit("main", &[("web/web.conf", Some("one\n"))], "one");
    let first = up.head("main");
    let text = rollout_config(&up, "rollout = \"20s\"");
    let (op, machines, _) = fleet_of(&ROLL, &text);
    for m in &machines {
        assert_eq!(deployed(m), first, "a first deployment adopts at once");
    }

    // A new head: the canary adopts at once, the others wait for their
    // place in a 20 s window.
    let second = commit_placed(&up, "two", &[("roll2", 0.15), ("roll3", 0.15)]);
    let mut at = Vec::new();
    for m in &machines {
        let before = now();
        let out = m.sh(&format!("{BIN} sync"));
        let s = service_status(m);
        if m.hostname() == "roll1" {
            assert_eq!(s["deployed"]["commit"], second.as_str(), "{out}");
            assert!(s["rollout"].is_null(), "{s}");
            continue;
        }
        assert_eq!(s["deployed"]["commit"], first.as_str(), "{out}");
        assert!(out.contains("waiting for rollout"), "{out}");
        let r = &s["rollout"];
        assert_eq!(r["commit"], second.as_str(), "{s}");
        let id: provision::CommitId = second.parse().expect("id");
        let p = provision::rollout_position(m.hostname(), "web", id).fraction();
        // Both sides through the same JSON text and parser: serde_json's
        // default float parsing can land one ulp off the value written.
        let written: f64 =
            serde_json::from_str(&serde_json::to_string(&p).expect("json")).expect("a float");
        assert_eq!(r["position"].as_f64(), Some(written), "{s}");
        let seen = r["seen"].as_u64().expect("seen");
        assert!(seen >= before && seen <= now(), "{s}");
        assert_eq!(r["at"].as_u64(), Some(seen + (p * 20.0) as u64), "{s}");
        at.push(r["at"].as_u64().expect("at"));
        let table = m.sh(&format!("{BIN} status"));
        assert!(table.contains("web: waiting for rollout"), "{table}");
        let metrics = m
            .read("/var/lib/prometheus/node-exporter/provision.prom")
            .expect("metrics file");
        assert!(
            metrics.contains(&format!(
                "provision_rollout_wait_until_timestamp_seconds{{service=\"web\"}} {}",
                r["at"]
            )),
            "{metrics}"
        );
    }

    // The fleet sees one adopted and two waiting, with their times.
    let out = op.fleet(&["status"]);
    let table = common::output_text(&out);
    assert!(table.contains("web: 1/3 at"), "{table}");
    assert!(table.contains("2 waiting (adopting from"), "{table}");
    let doc = op.status(&[]);
    assert_eq!(doc["services"][0]["waiting"], 2, "{doc}");
    assert_eq!(
        doc["services"][0]["waiting_until"].as_u64(),
        at.iter().max().copied()
    );

    // A freeze holds roll3; roll2 adopts at its time, not before: every
    // pass that started before its time kept the old commit, and the first
    // pass that started at or after it adopted (whatever the machine's load).
    machines[2].sh(&format!("{BIN} freeze web --reason 'not today'"));
    let end = at.iter().max().copied().unwrap_or(0) + 3;
    let mut adopted = None;
    while now() <= end {
        let started = now();
        machines[1].sh(&format!("{BIN} sync"));
        let ended = now();
        let has = deployed(&machines[1]) == second;
        match adopted {
            None if has => {
                assert!(ended >= at[0], "adopted by {ended}, its time was {}", at[0]);
                adopted = Some(started);
            }
            None => assert!(
                started < at[0],
                "a pass started at {started} kept the old commit; its time was {}",
                at[0]
            ),
            Some(_) => {}
        }
        machines[2].sh(&format!("{BIN} sync"));
        assert_eq!(deployed(&machines[2]), first, "frozen");
        std::thread::sleep(Duration::from_millis(400));
    }
    assert!(adopted.is_some(), "roll2 never adopted by {end}");
    let s = service_status(&machines[2]);
    assert_eq!(s["state"], "frozen", "{s}");
    assert!(
        s["rollout"].is_null(),
        "a freeze is not a rollout wait: {s}"
    );
    machines[2].sh(&format!("{BIN} forward web"));
    assert_eq!(deployed(&machines[2]), second);

    // `forward` adopts before the machine's time.
    let third = commit_placed(&up, "three", &[("roll2", 0.6)]);
    machines[1].sh(&format!("{BIN} sync"));
    let wait = service_status(&machines[1])["rollout"]["at"]
        .as_u64()
        .expect("waiting");
    let out = machines[1].sh(&format!("{BIN} forward web"));
    assert!(now() < wait, "forward came too late to prove anything");
    assert_eq!(deployed(&machines[1]), third, "{out}");
    assert!(service_status(&machines[1])["rollout"].is_null());

    // The gate: the others adopt only once the canary has served the head
    // for `soak`, as the fleet's Prometheus shows.
    let mut watch = Watch::start(&op, &ROLL, &machines);
    let gated = rollout_config(&up, &format!("gate = \"{}\"\nsoak = \"6s\"", watch.url));
    for m in &machines {
        m.put("/etc/provision/config.toml", &gated, 0o644);
        m.sh(&format!("{BIN} sync"));
    }
    let fourth = up.commit("main", &[("web/web.conf", Some("four\n"))], "four");
    machines[0].sh(&format!("{BIN} sync"));
    let canary_at = service_status(&machines[0])["deployed"]["time"]
        .as_u64()
        .expect("canary deployed");
    let out = machines[1].sh(&format!("{BIN} sync"));
    assert!(out.contains("gate closed"), "{out}");
    let s = service_status(&machines[1]);
    assert!(
        s["rollout"]["gate"]
            .as_str()
            .is_some_and(|g| g.contains("canaries needed have served")),
        "{s}"
    );
    let until = Instant::now() + Duration::from_secs(60);
    let mut adopted: [Option<u64>; 2] = [None, None];
    while adopted.iter().any(Option::is_none) {
        for (m, when) in machines[1..].iter().zip(&mut adopted) {
            m.sh(&format!("{BIN} sync"));
            if when.is_none() && deployed(m) == fourth {
                *when = Some(now());
            }
        }
        assert!(
            Instant::now() < until,
            "the gate never opened: {}",
            service_status(&machines[1])
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for when in adopted.into_iter().flatten() {
        assert!(
            when >= canary_at + 6,
            "adopted at {when}, the canary deployed at {canary_at} (soak 6s)"
        );
    }

    // The canary rejects a commit (its health check fails): the rollout
    // halts for good, however long the others wait.
    let bad = up.commit("main", &[("web/web.conf", Some("bad\n"))], "bad");
    let (code, out) = machines[0].sh_status(&format!("{BIN} sync"));
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        service_status(&machines[0])["rejected"]["commit"],
        bad.as_str()
    );
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        machines[2].sh(&format!("{BIN} sync"));
        let gate = service_status(&machines[2])["rollout"]["gate"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if gate.contains("was rejected on roll1 (health)") {
            break;
        }
        assert!(
            Instant::now() < until,
            "the rejection never reached the gate: {gate}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(8));
    let out = machines[2].sh(&format!("{BIN} sync"));
    assert!(out.contains("the rollout is halted"), "{out}");
    assert_eq!(deployed(&machines[2]), fourth);
    let table = machines[2].sh(&format!("{BIN} status"));
    assert!(table.contains("gate closed"), "{table}");

    // Prometheus gone: the gate fails closed and says why.
    watch.stop_prometheus();
    let fifth = up.commit("main", &[("web/web.conf", Some("five\n"))], "five");
    machines[0].sh(&format!("{BIN} sync"));
    assert_eq!(deployed(&machines[0]), fifth);
    std::thread::sleep(Duration::from_secs(7));
    let out = machines[1].sh(&format!("{BIN} sync"));
    assert!(out.contains("cannot be asked"), "{out}");
    assert_eq!(deployed(&machines[1]), fourth);
    let s = service_status(&machines[1]);
    assert!(
        s["rollout"]["gate"]
            .as_str()
            .is_some_and(|g| g.contains("Prometheus at http://127.0.0.1")),
        "{s}"
    );
}

const WEB: [&str; 2] = ["webui1", "webui2"];

/// `curl` with `args`: (HTTP status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "120"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The value of attribute `attr` of the first tag containing `marker`.
fn attribute(html: &str, marker: &str, attr: &str) -> Option<String> {
    let at = html.find(marker)?;
    let tag_start = html[..=at].rfind('<')?;
    let tag = &html[tag_start..tag_start + html[tag_start..].find('>')?];
    let key = format!("{attr}=\"");
    let v = &tag[tag.find(&key)? + key.len()..];
    Some(v[..v.find('"')?].to_string())
}

/// A running `provision fleet serve`, stopped when dropped (a failed
/// assertion included).
struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `provision fleet ... serve ARGS` and waits until it answers.
fn serve(op: &Operator, port: u16, args: &[&str]) -> Served {
    let mut cmd = Command::new(BIN);
    cmd.arg("fleet")
        .arg("-c")
        .arg(op.path("config.toml"))
        .arg("--ssh-config")
        .arg(op.path("ssh_config"))
        .args(["--remote-command", BIN, "serve", "--refresh", "2s"])
        .args(args);
    serve_with(cmd, &op.path(&format!("serve-{port}.log")), port)
}

/// Runs `cmd` (a `fleet serve`) with its stderr in `log` until it listens
/// on `port`.
fn serve_with(mut cmd: Command, log: &Path, port: u16) -> Served {
    let file = fs::File::create(log).expect("log");
    let child = cmd
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("provision fleet serve");
    let child = Served(child);
    let until = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < until,
            "fleet serve never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// The newest login link `fleet serve` printed in `log`.
fn login_link(log: &Path) -> String {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if let Some(link) = text
            .lines()
            .rev()
            .find_map(|l| l.split_whitespace().find(|w| w.contains("/login?key=")))
        {
            return link.to_string();
        }
        assert!(Instant::now() < until, "no login link in the log:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Logs in with the newest link of `log`, keeping the session in `jar`.
fn log_in(log: &Path, jar: &Path) {
    let jar = jar.display().to_string();
    let (code, body) = curl(&["-c", &jar, &login_link(log)]);
    assert_eq!(code, 303, "{body}");
    assert!(
        fs::read_to_string(&jar).is_ok_and(|j| j.contains("provision-session")),
        "no session cookie"
    );
}

fn chromium(args: &[&str], url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("chromium");
    assert!(out.status.success(), "{}", common::output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_fleet_web_page_shows_every_machine_and_acts_only_with_its_token() {
    if !common::require_tool("git-daemon")
        || !common::require_tool("sshd")
        || !common::require_tool("curl")
        || !common::require_tool("chromium")
        || !common::require_tool("htpasswd")
        || !common::container::require_containers()
    {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    let first = up.commit("main", &[("web/web.conf", Some("one\n"))], "one");
    let second = up.commit(
        "main",
        &[("web/web.conf", Some("two\n"))],
        "two: a longer subject",
    );
    let text = config(&up, &WEB);
    let (op, machines, _) = fleet_of(&WEB, &text);
    let state = |m: &Machine| {
        service_status(m)["state"]
            .as_str()
            .unwrap_or("?")
            .to_string()
    };
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = serve(&op, port, &["--listen", &format!("127.0.0.1:{port}")]);
    let log = op.path(&format!("serve-{port}.log"));
    let jar = op.path("cookies").display().to_string();
    // Without a session: 401 and no token; with the login link: a session.
    let (code, body) = curl(&[&format!("{base}/")]);
    assert_eq!(code, 401, "{body}");
    assert!(!body.contains("token"), "{body}");
    log_in(&log, Path::new(&jar));
    let curl = |args: &[&str]| {
        let mut all = vec!["-b", jar.as_str()];
        all.extend_from_slice(args);
        curl(&all)
    };

    // The page and the API list every machine with its deployed commit.
    let (code, api) = curl(&[&format!("{base}/api/v1/status")]);
    assert_eq!(code, 200, "{api}");
    let doc: serde_json::Value = serde_json::from_str(&api).expect("status JSON");
    for (name, m) in WEB
        .iter()
        .zip(&doc["machines"].as_array().expect("machines")[..])
    {
        assert_eq!(m["machine"], *name);
        assert_eq!(
            m["status"]["services"][0]["deployed"]["commit"],
            second.as_str()
        );
    }
    let (code, page) = curl(&[&format!("{base}/")]);
    assert_eq!(code, 200, "{page}");
    for name in WEB {
        assert!(page.contains(&format!("data-machine=\"{name}\"")), "{page}");
    }
    assert!(
        page.contains(&second[..10]) && page.contains("two: a longer subject"),
        "{page}"
    );
    let token = attribute(&page, "name=\"provision-token\"", "content").expect("token meta");
    assert!(token.len() >= 32, "{token}");

    // Without the token: 403, and nothing changes.
    let (code, body) = curl(&[
        "-d",
        "service=web&machines=webui1&reason=x",
        &format!("{base}/api/v1/freeze"),
    ]);
    assert_eq!(code, 403, "{body}");
    let (code, _) = curl(&[
        "-d",
        "service=web&machines=webui1",
        "-H",
        "X-Provision-Token: wrong",
        &format!("{base}/api/v1/freeze"),
    ]);
    assert_eq!(code, 403);
    assert_eq!(state(&machines[0]), "following");

    // The machine page's form, with its token, freezes that machine only.
    let (code, mpage) = curl(&[&format!("{base}/machine/webui1")]);
    assert_eq!(code, 200, "{mpage}");
    assert_eq!(
        attribute(&mpage, "name=\"token\"", "value").as_deref(),
        Some(token.as_str())
    );
    assert!(mpage.contains("formaction=\"/api/v1/freeze\""), "{mpage}");
    let (code, result) = curl(&[
        "--data-urlencode",
        "service=web",
        "--data-urlencode",
        "machines=webui1",
        "--data-urlencode",
        "reason=from the page",
        "--data-urlencode",
        &format!("token={token}"),
        "--data-urlencode",
        "do=freeze",
        &format!("{base}/api/v1/freeze"),
    ]);
    assert_eq!(code, 200, "{result}");
    assert!(result.contains("1 of 1 ok"), "{result}");
    assert_eq!(state(&machines[0]), "frozen");
    assert_eq!(state(&machines[1]), "following");
    let hold = service_status(&machines[0])["hold"].clone();
    assert_eq!(hold["reason"], "from the page");
    assert!(
        hold["by"]
            .as_str()
            .is_some_and(|b| b.ends_with("(fleet web)")),
        "{hold}"
    );

    // A rollback from the service page: pick the older commit, tick webui2.
    let (code, spage) = curl(&[&format!("{base}/service/web")]);
    assert_eq!(code, 200, "{spage}");
    let option = attribute(&spage, &format!("<option value=\"{first}\""), "value")
        .expect("the older commit is offered");
    assert!(spage.contains("formaction=\"/api/v1/rollback\""), "{spage}");
    assert!(
        spage.contains("name=\"machines\" value=\"webui2\""),
        "{spage}"
    );
    let (code, result) = curl(&[
        "-H",
        "Accept: application/json",
        "--data-urlencode",
        "service=web",
        "--data-urlencode",
        "machines=webui2",
        "--data-urlencode",
        &format!("rev={option}"),
        "--data-urlencode",
        &format!("token={token}"),
        &format!("{base}/api/v1/rollback"),
    ]);
    assert_eq!(code, 200, "{result}");
    let r: serde_json::Value = serde_json::from_str(&result).expect("JSON result");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["results"][0]["machine"], "webui2", "{r}");
    assert_eq!(deployed(&machines[1]), first);
    assert_eq!(deployed(&machines[0]), second, "only the chosen machine");
    let log_text = fs::read_to_string(&log).expect("log");
    assert!(
        log_text.contains(&format!("provision rollback web {first} on webui2")),
        "{log_text}"
    );
    assert!(log_text.contains("refused freeze"), "{log_text}");

    // A real browser: the DOM has the grid with both machines; a
    // screenshot of the page as it is now.
    let dom = chromium(
        &["--dump-dom"],
        &format!("{}&next=/%3Frefresh%3D1", login_link(&log)),
    );
    assert!(dom.contains("id=\"grid\""), "{dom}");
    for name in WEB {
        assert!(dom.contains(&format!("data-machine=\"{name}\"")), "{dom}");
    }
    assert!(
        dom.contains("data-state=\"frozen\"") && dom.contains("data-state=\"pinned\""),
        "{dom}"
    );
    let shot = common::project_root().join("target/fleet-web.png");
    let _ = fs::remove_file(&shot);
    chromium(
        &[
            "--window-size=1100,760",
            &format!("--screenshot={}", shot.display()),
        ],
        &login_link(&log),
    );
    let png = fs::read(&shot).expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    drop(server);

    // Beyond loopback: only with an auth file; a wrong password gets 401.
    let out = op.fleet(&[
        "serve",
        "--listen",
        &format!("0.0.0.0:{}", common::free_port()),
    ]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("--auth-file"), "{text}");
    let out = Command::new("htpasswd")
        .args(["-nbB", "alice", "s3cret"])
        .output()
        .expect("htpasswd");
    assert!(out.status.success());
    fs::write(op.path("users"), &out.stdout).expect("auth file");
    let port = common::free_port();
    let auth = op.path("users").display().to_string();
    let _server = serve(
        &op,
        port,
        &["--listen", &format!("0.0.0.0:{port}"), "--auth-file", &auth],
    );
    let url = format!("http://127.0.0.1:{port}/api/v1/status");
    let curl = |args: &[&str]| self::curl(args);
    assert_eq!(curl(&[&url]).0, 401);
    assert_eq!(curl(&["-u", "alice:wrong", &url]).0, 401);
    let (code, body) = curl(&["-u", "alice:s3cret", &url]);
    assert_eq!(code, 200, "{body}");
}

/// A `fleet serve` for machines `a` and `b` that no ssh reaches: every ssh
/// run is counted in `ssh-runs` and fails. For attacks on the server itself.
fn unreachable_fleet(dir: &Path, port: u16) -> (Served, PathBuf) {
    let cfg = dir.join("config.toml");
    fs::write(
        &cfg,
        "[[services]]\nmachine = [\"a\", \"b\"]\nservice = \"web\"\nupstream = \"git://127.0.0.1:9/x\"\n\
         dirs = [ { local = \"/srv/web\", link = \"web\" } ]\n",
    )
    .expect("config");
    let ssh = dir.join("counting-ssh");
    script(
        &ssh,
        &format!(
            "#!/bin/sh\necho run >> {}\necho 'ssh: connect: refused' >&2\nexit 255\n",
            dir.join("ssh-runs").display()
        ),
    );
    let mut cmd = Command::new(BIN);
    cmd.arg("fleet")
        .arg("-c")
        .arg(&cfg)
        .arg("--ssh-command")
        .arg(&ssh)
        .args(["serve", "--refresh", "60s", "--listen"])
        .arg(format!("127.0.0.1:{port}"));
    let log = dir.join("serve.log");
    (serve_with(cmd, &log, port), log)
}

/// How many times the fleet's ssh ran.
fn ssh_runs(dir: &Path) -> usize {
    fs::read_to_string(dir.join("ssh-runs"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// One raw HTTP exchange: sends `bytes`, returns what came back before the
/// server closed (or `timeout` passed).
fn raw(port: u16, bytes: &[u8], timeout: Duration) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_fleet_page_shuts_out_other_local_users_rebound_names_and_other_sites() {
    if !common::require_tool("curl")
        || !common::require_tool("chromium")
        || !common::require_tool("setpriv")
        || !common::require_tool("python3")
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let (_server, log) = unreachable_fleet(dir.path(), port);
    let jar = dir.path().join("cookies");
    let jar_arg = jar.display().to_string();

    // Another local account (nobody, through setpriv) gets 401 everywhere,
    // 404s included, and never sees the form token.
    let as_nobody = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl"])
            .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "30"])
            .args(args)
            .output()
            .expect("curl as nobody");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse::<u16>().unwrap_or(0), body.to_string())
    };
    for path in [
        "/",
        "/api/v1/status",
        "/machine/a",
        "/service/web",
        "/no/such/page",
    ] {
        let (code, body) = as_nobody(&[&format!("{base}{path}")]);
        assert_eq!(code, 401, "{path}: {body}");
        assert!(!body.contains("token"), "{path}: {body}");
    }
    let (code, _) = as_nobody(&[
        "-d",
        "service=web&machines=a",
        &format!("{base}/api/v1/freeze"),
    ]);
    assert_eq!(code, 401);
    assert_eq!(ssh_runs(dir.path()), 0, "nothing reached the fleet");

    // A name rebound to 127.0.0.1 is refused before the login is looked at:
    // the key it carried still works afterwards for the real address.
    let link = login_link(&log);
    let rebound = link.replace("127.0.0.1", "rebind.example");
    let (code, body) = curl(&[
        "--resolve",
        &format!("rebind.example:{port}:127.0.0.1"),
        &rebound,
    ]);
    assert_eq!(code, 421, "{body}");
    let dom = chromium(
        &[
            "--dump-dom",
            "--host-resolver-rules=MAP rebind.example 127.0.0.1",
        ],
        &format!("http://rebind.example:{port}/api/v1/status"),
    );
    assert!(dom.contains("not reached by that name"), "{dom}");
    assert!(!dom.contains("machines"), "{dom}");
    let (code, body) = curl(&["-c", &jar_arg, &link]);
    assert_eq!(code, 303, "the rebound request used no key: {body}");
    // The link worked once: a second use is refused.
    assert_eq!(curl(&[&link]).0, 403);
    let (code, page) = curl(&["-b", &jar_arg, &format!("{base}/")]);
    assert_eq!(code, 200, "{page}");
    let token = attribute(&page, "name=\"provision-token\"", "content").expect("token meta");
    // With a session, a rebound name is still refused.
    let (code, _) = curl(&[
        "-b",
        &jar_arg,
        "-H",
        &format!("Host: rebind.example:{port}"),
        &format!("{base}/api/v1/status"),
    ]);
    assert_eq!(code, 421);

    // A page of another origin (another port of 127.0.0.1, so "same site"
    // to the browser) that knows the token posts a freeze: refused, and no
    // ssh runs.
    let hostile = dir.path().join("hostile");
    fs::create_dir(&hostile).expect("hostile dir");
    fs::write(
        hostile.join("attack.html"),
        format!(
            "<!doctype html><form id=f method=post action=\"{base}/api/v1/freeze\">\
             <input name=service value=web><input name=machines value=a>\
             <input name=reason value=pwned><input name=token value=\"{token}\"></form>\
             <script>document.getElementById('f').submit();</script>"
        ),
    )
    .expect("hostile page");
    let hostile_port = common::free_port();
    let mut page_server = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(hostile_port.to_string())
        .current_dir(&hostile)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 http.server");
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", hostile_port)).is_err() {
        assert!(Instant::now() < until, "the hostile page never served");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = ssh_runs(dir.path());
    let dom = chromium(
        &["--dump-dom", "--virtual-time-budget=10000"],
        &format!("http://127.0.0.1:{hostile_port}/attack.html"),
    );
    let _ = page_server.kill();
    let _ = page_server.wait();
    let text = fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("sent by another site's page"),
        "{text}\n{dom}"
    );
    assert!(!text.contains("provision freeze"), "{text}");
    assert_eq!(ssh_runs(dir.path()), before, "no ssh for the forged POST");
    // The same form from curl (no browser headers) with the session works.
    let (code, body) = curl(&[
        "-b",
        &jar_arg,
        "-d",
        &format!("service=web&machines=a&token={token}"),
        &format!("{base}/api/v1/freeze"),
    ]);
    assert_eq!(code, 200, "{body}");

    // A page reloading ?refresh=1 cannot keep the fleet's ssh busy: ten
    // forced refreshes inside five seconds collect once at most.
    let before = ssh_runs(dir.path());
    for _ in 0..10 {
        assert_eq!(
            curl(&["-b", &jar_arg, &format!("{base}/?refresh=1")]).0,
            200
        );
        assert_eq!(
            curl(&["-b", &jar_arg, &format!("{base}/machine/a?refresh=1")]).0,
            200
        );
    }
    assert!(
        ssh_runs(dir.path()) - before <= 2,
        "{} ssh runs for 20 page loads",
        ssh_runs(dir.path()) - before
    );
}

#[test]
fn the_fleet_page_survives_huge_slow_and_idle_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    let (mut server, _log) = unreachable_fleet(dir.path(), port);
    let alive = |what: &str, server: &mut Served| {
        assert!(
            server.0.try_wait().expect("wait").is_none(),
            "the server died after {what}"
        );
        let answer = raw(
            port,
            format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        );
        assert!(answer.starts_with("HTTP/1.1 401"), "after {what}: {answer}");
    };

    // A body announced at 100 GB is refused by its length, unread.
    let answer = raw(
        port,
        format!(
            "POST /api/v1/freeze HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 100000000000\r\n\r\n"
        )
        .as_bytes(),
        Duration::from_secs(5),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    alive("a 100 GB Content-Length", &mut server);

    // A header line of a megabyte.
    let mut huge = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Big: ").into_bytes();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    let answer = raw(port, &huge, Duration::from_secs(5));
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    alive("a 1 MiB header", &mut server);

    // Forty idle connections and one that promised a body it never sends
    // do not lock anyone out, and the slow one is cut off.
    let idle: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("idle connection"))
        .collect();
    let slow_started = Instant::now();
    let slow = std::thread::spawn(move || {
        raw(
            port,
            format!("POST /api/v1/freeze HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 10\r\n\r\nab")
                .as_bytes(),
            Duration::from_secs(60),
        )
    });
    let started = Instant::now();
    alive("40 idle connections", &mut server);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let answer = slow.join().expect("slow client");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        slow_started.elapsed() < Duration::from_secs(20),
        "the slow body held its connection {:?}",
        slow_started.elapsed()
    );
    drop(idle);
    alive("the slow body", &mut server);
}

/// A node_exporter serving the textfiles of `dir` on a port of its own.
fn node_exporter(dir: &Path) -> (std::process::Child, u16) {
    let port = common::free_port();
    let child = Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .args(["--collector.disable-defaults", "--collector.textfile"])
        .arg(format!("--collector.textfile.directory={}", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node_exporter");
    (child, port)
}

/// Kills its processes when the test ends, however it ends.
struct Reaped(Vec<std::process::Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The gate asks a Prometheus behind TLS and basic authentication (its
/// own `web.config.file`), and counts only the fleet's machines: a
/// rejection published by another scraped target does not halt the
/// rollout. `fleet status --prometheus` reaches the same Prometheus.
#[test]
fn the_gate_counts_only_the_fleets_machines_and_reaches_a_guarded_prometheus() {
    for tool in [
        "git-daemon",
        "prometheus",
        "prometheus-node-exporter",
        "openssl",
    ] {
        if !common::require_tool(tool) {
            return;
        }
    }
    let d = GitDaemon::start();
    let up = d.repo("app");
    let first = common::host::seed(&up);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |n: &str| dir.path().join(n);
    let mut reaped = Reaped(Vec::new());

    // Prometheus with TLS and a user, as its web.config.file gives them.
    common::smart_http::certificate(dir.path());
    let hash = bcrypt::hash("s3cret-pass", 4).expect("bcrypt");
    fs::write(
        path("web.yml"),
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  gatekeeper: '{hash}'\n",
            path("cert.pem").display(),
            path("key.pem").display()
        ),
    )
    .expect("web.yml");
    fs::write(path("password"), "s3cret-pass\n").expect("password");

    let canary = common::host::Host::new();
    let follower = common::host::Host::new();
    let config = format!(
        "[global]\ncanary = [\"canary1\"]\ngate = \"https://127.0.0.1:{{PORT}}\"\nsoak = \"1s\"\n\
         gate_user = \"gatekeeper\"\ngate_token_file = \"{}\"\ngate_ca_file = \"{}\"\n",
        path("password").display(),
        path("cert.pem").display()
    );
    let prom_port = common::free_port();
    let config = config.replace("{PORT}", &prom_port.to_string());
    let app = common::host::app_config(&up.url(), "");
    let app = app.replace(
        "machine = \"test-host\"",
        "machine = [\"canary1\", \"test-host\"]",
    );
    canary.write_config(&format!("{config}{app}"));
    follower.write_config(&format!("{config}{app}"));

    // The canary is a real provision under the name canary1.
    let canary_sync = || {
        let pass = canary.command(&["sync"]);
        let args: Vec<_> = pass
            .get_args()
            .map(|a| {
                if a == "test-host" {
                    "canary1".into()
                } else {
                    a.to_owned()
                }
            })
            .collect();
        let out = Command::new(pass.get_program())
            .args(&args)
            .output()
            .expect("the canary's pass");
        assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    };
    // Both start on the first commit (a first deployment has no gate);
    // the second is the canary's alone until the gate opens.
    canary_sync();
    follower.sync(0);
    let second = up.commit("main", &[("app/etc/app.conf", Some("port = 2\n"))], "two");
    canary_sync();

    // Another target Prometheus scrapes says the commit was rejected.
    let intruder = path("intruder");
    fs::create_dir_all(&intruder).expect("mkdir");
    fs::write(
        intruder.join("forged.prom"),
        format!(
            "provision_rejected_commit_info{{service=\"app\",commit=\"{second}\",stage=\"health\"}} 1\n"
        ),
    )
    .expect("forged series");
    let (c, canary_port) = node_exporter(&canary.metrics_dir());
    reaped.0.push(c);
    let (c, intruder_port) = node_exporter(&intruder);
    reaped.0.push(c);
    fs::write(
        path("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: node\n    static_configs:\n\
             \x20     - targets: ['127.0.0.1:{canary_port}']\n        labels: {{instance: canary1}}\n\
             \x20     - targets: ['127.0.0.1:{intruder_port}']\n        labels: {{instance: intruder}}\n"
        ),
    )
    .expect("prometheus.yml");
    reaped.0.push(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                path("prometheus.yml").display()
            ))
            .arg(format!("--web.config.file={}", path("web.yml").display()))
            .arg(format!("--storage.tsdb.path={}", path("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus"),
    );

    // The follower waits for the gate, which opens once Prometheus has
    // the canary's series: the intruder's rejection does not count.
    let until = Instant::now() + Duration::from_secs(60);
    let mut said = String::new();
    let mut waited = false;
    while Instant::now() < until {
        let pass = common::output_text(&follower.run(&["sync"]));
        waited |= pass.contains("gate closed");
        said.push_str(&pass);
        if follower.status_json()["deployed"]["commit"] == second.as_str() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        follower.status_json()["deployed"]["commit"],
        second.as_str(),
        "{said}"
    );
    assert!(waited, "the gate was closed at first: {said}");
    assert!(said.contains("1 of 1 canaries served it"), "{said}");
    assert!(!said.contains("s3cret"), "{said}");
    let _ = &first;

    // The fleet's view through the same Prometheus, and without the
    // password a clear refusal that shows no secret.
    let fleet = |extra: &[&str]| {
        let out = Command::new(BIN)
            .arg("-c")
            .arg(follower.config_path())
            .args(["fleet", "status", "--prometheus"])
            .arg(format!("https://127.0.0.1:{prom_port}"))
            .arg("--prometheus-ca-file")
            .arg(path("cert.pem"))
            .args(extra)
            .output()
            .expect("fleet status");
        (out.status.code(), common::output_text(&out))
    };
    let token = path("password").display().to_string();
    let (code, seen) = fleet(&[
        "--prometheus-user",
        "gatekeeper",
        "--prometheus-token-file",
        &token,
    ]);
    let row = seen
        .lines()
        .find(|l| l.starts_with("canary1"))
        .unwrap_or("");
    assert!(row.contains(&second[..10]), "{seen}");
    assert!(!seen.contains("401"), "{seen}");
    let _ = code;
    let (code, seen) = fleet(&[]);
    assert_ne!(code, Some(0), "{seen}");
    assert!(seen.contains("401"), "{seen}");
}

/// HMAC-SHA256 of `body` keyed by `secret`, hex, by OpenSSL (not by
/// provision's own code).
fn hmac_hex(secret: &str, body: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret, "-r"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("writing to openssl");
    let out = child.wait_with_output().expect("openssl");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Posts `body` to the hook with `headers`; (status, body).
fn post_hook(port: u16, headers: &[String], body: &str) -> (u16, String) {
    let mut args: Vec<String> = Vec::new();
    for h in headers {
        args.push("-H".into());
        args.push(h.clone());
    }
    args.extend([
        "-H".into(),
        "Content-Type: application/json".into(),
        "--data-binary".into(),
        body.to_string(),
        format!("http://127.0.0.1:{port}/api/v1/hook"),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&refs)
}

/// A push payload of `forge` for `url`'s `main`, changing `paths`.
fn push_payload(forge: &str, url: &str, paths: &[&str]) -> String {
    let commits = serde_json::json!([{"id": "x", "added": [], "removed": [], "modified": paths}]);
    let v = match forge {
        "gitlab" => serde_json::json!({
            "object_kind": "push", "ref": "refs/heads/main", "total_commits_count": 1,
            "project": {"path_with_namespace": "ops/cfg", "git_http_url": url, "git_ssh_url": "git@example.invalid:ops/cfg.git", "web_url": "https://example.invalid/ops/cfg"},
            "commits": commits,
        }),
        _ => serde_json::json!({
            "ref": "refs/heads/main",
            "repository": {"full_name": "ops/cfg", "clone_url": url, "ssh_url": "git@example.invalid:ops/cfg.git", "html_url": "https://example.invalid/ops/cfg"},
            "commits": commits,
        }),
    };
    v.to_string()
}

/// A push to the hook of `fleet serve` runs `sync` on exactly the
/// machines whose services follow the repository and whose paths changed,
/// for the payloads and signatures of GitHub, Gitea and GitLab; a wrong or
/// missing signature runs nothing.
#[test]
fn a_signed_push_syncs_exactly_the_machines_it_concerns() {
    if !common::require_tool("git-daemon")
        || !common::require_tool("sshd")
        || !common::require_tool("openssl")
        || !common::container::require_containers()
    {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    let first = up.commit(
        "main",
        &[
            ("web/web.conf", Some("one\n")),
            ("other/o.conf", Some("o1\n")),
        ],
        "one",
    );
    let text = format!(
        "[[services]]\nmachine = [\"hook1\", \"hook2\"]\nservice = \"web\"\nupstream = \"{url}\"\n\
         interval = \"1d\"\ndirs = [ {{ local = \"/etc/web\", link = \"web\" }} ]\n\n\
         [[services]]\nmachine = \"hook3\"\nservice = \"web\"\nname = \"other\"\nupstream = \"{url}\"\n\
         interval = \"1d\"\ndirs = [ {{ local = \"/etc/other\", link = \"other\" }} ]\n",
        url = up.url()
    );
    let names = ["hook1", "hook2", "hook3"];
    let (op, machines, _) = fleet_of(&names, &text);
    for m in &machines {
        assert_eq!(deployed(m), first);
    }
    let secret = "a-hook-secret-of-the-forge";
    fs::write(op.path("hook-secret"), format!("{secret}\n")).expect("secret");
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let secret_file = op.path("hook-secret").display().to_string();
    let _served = serve(
        &op,
        port,
        &["--listen", &listen, "--webhook-secret", &secret_file],
    );
    let log = op.path(&format!("serve-{port}.log"));
    let wait_deployed = |m: &Machine, commit: &str| {
        m.wait_until(Duration::from_secs(60), "the push's pass", || {
            deployed(m) == commit
        });
    };

    // GitHub: web/ changed, so hook1 and hook2 sync; hook3 does not.
    let second = up.commit("main", &[("web/web.conf", Some("two\n"))], "two");
    let body = push_payload("github", &up.url(), &["web/web.conf"]);
    let (code, answer) = post_hook(
        port,
        &[
            format!("X-Hub-Signature-256: sha256={}", hmac_hex(secret, &body)),
            "X-GitHub-Event: push".into(),
        ],
        &body,
    );
    assert_eq!(code, 202, "{answer}");
    assert!(
        answer.contains("hook1: web") && answer.contains("hook2: web"),
        "{answer}"
    );
    assert!(!answer.contains("hook3"), "{answer}");
    wait_deployed(&machines[0], &second);
    wait_deployed(&machines[1], &second);
    assert_eq!(
        deployed(&machines[2]),
        first,
        "hook3's paths did not change"
    );

    // A wrong signature, or none, runs nothing.
    let third = up.commit("main", &[("web/web.conf", Some("three\n"))], "three");
    let body = push_payload("github", &up.url(), &["web/web.conf"]);
    for headers in [
        vec![format!(
            "X-Hub-Signature-256: sha256={}",
            hmac_hex("guess", &body)
        )],
        vec![format!("X-Gitea-Signature: {}", hmac_hex("guess", &body))],
        vec!["X-Gitlab-Token: guess".to_string()],
        vec![],
    ] {
        let (code, answer) = post_hook(port, &headers, &body);
        assert_eq!(code, 401, "{headers:?}: {answer}");
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        deployed(&machines[0]),
        second,
        "an unsigned push ran a pass"
    );

    // Gitea: other/ changed: hook3 syncs, and only it.
    let body = push_payload("gitea", &up.url(), &["other/o.conf"]);
    let (code, answer) = post_hook(
        port,
        &[
            format!("X-Gitea-Signature: {}", hmac_hex(secret, &body)),
            "X-Gitea-Event: push".into(),
        ],
        &body,
    );
    assert_eq!(code, 202, "{answer}");
    assert!(
        answer.contains("hook3: other") && !answer.contains("hook1"),
        "{answer}"
    );
    wait_deployed(&machines[2], &third);
    assert_eq!(deployed(&machines[0]), second);

    // GitLab, its token: web/ changed.
    let body = push_payload("gitlab", &up.url(), &["web/web.conf"]);
    let (code, answer) = post_hook(
        port,
        &[
            format!("X-Gitlab-Token: {secret}"),
            "X-Gitlab-Event: Push Hook".into(),
        ],
        &body,
    );
    assert_eq!(code, 202, "{answer}");
    wait_deployed(&machines[0], &third);
    wait_deployed(&machines[1], &third);

    let logged = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains("GitHub push to ops/cfg main: sync on hook1: web, hook2: web")
            && logged.contains("refused a hook"),
        "{logged}"
    );
    assert!(!logged.contains(secret), "the secret was logged");
    // The page shows what the pushes triggered.
    let jar = op.path("jar");
    log_in(&log, &jar);
    let (code, page) = curl(&[
        "-b",
        &jar.display().to_string(),
        &format!("http://{listen}/"),
    ]);
    assert_eq!(code, 200);
    assert!(
        page.contains("<h2>Pushes</h2>") && page.contains("hook3: other: ok"),
        "{page}"
    );
}

/// A STAND-IN for Prometheus's HTTP API, for a fleet of `n` machines
/// that cannot be booted here (10,000): every `provision_*` family the
/// query names, one series per machine, as node_exporters scraped with
/// `instance` = the machine would give; machine `problem` failed its last
/// pass. Returns its URL.
fn prometheus_stand_in(n: usize, problem: usize) -> String {
    let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("stand-in"));
    let port = server.server_addr().to_ip().expect("ip").port();
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let url = req.url().to_string();
            let mut body = String::from(
                "{\"status\":\"success\",\"data\":{\"resultType\":\"vector\",\"result\":[",
            );
            let mut first = true;
            for family in [
                "provision_deployed_commit_info",
                "provision_upstream_commit_info",
                "provision_in_sync",
                "provision_last_pass_success",
                "provision_last_pass_timestamp_seconds",
            ] {
                if !url.contains(family) {
                    continue;
                }
                for i in 0..n {
                    let commit = if family.ends_with("commit_info") {
                        format!(",\"commit\":\"{}\"", "ab".repeat(20))
                    } else {
                        String::new()
                    };
                    let value = match family {
                        "provision_last_pass_timestamp_seconds" => "1796400000".to_string(),
                        "provision_last_pass_success" if i == problem => "0".to_string(),
                        _ => "1".to_string(),
                    };
                    if !first {
                        body.push(',');
                    }
                    first = false;
                    body.push_str(&format!(
                        "{{\"metric\":{{\"__name__\":\"{family}\",\"instance\":\"m{i:05}:9100\",\"service\":\"web\"{commit}}},\"value\":[1796400000,\"{value}\"]}}"
                    ));
                }
            }
            body.push_str("]}}");
            let _ = req.respond(tiny_http::Response::from_string(body));
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// The overview of 10,000 machines is a page of 200, problems first,
/// filtered by service, state and name, with a pager; a real browser lays
/// it out.
#[test]
fn the_fleet_page_of_ten_thousand_machines_is_paged_and_filtered() {
    if !common::require_tool("curl") || !common::require_tool("chromium") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let names: Vec<String> = (0..10_000).map(|i| format!("\"m{i:05}\"")).collect();
    let cfg = dir.path().join("config.toml");
    fs::write(
        &cfg,
        format!(
            "[[services]]\nmachine = [{}]\nservice = \"web\"\nupstream = \"https://git.example.net/ops/config\"\n\
             dirs = [ {{ local = \"/etc/web\", link = \"web\" }} ]\n",
            names.join(", ")
        ),
    )
    .expect("config");
    let url = prometheus_stand_in(10_000, 4242);
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(BIN);
    cmd.args(["fleet", "-c"])
        .arg(&cfg)
        .args(["serve", "--prometheus", &url, "--listen", &listen]);
    let log = dir.path().join("serve.log");
    let _served = serve_with(cmd, &log, port);
    let jar = dir.path().join("jar");
    log_in(&log, &jar);
    let jar = jar.display().to_string();
    let get = |q: &str| {
        let (code, page) = curl(&["-b", &jar, &format!("http://{listen}/{q}")]);
        assert_eq!(code, 200, "{page}");
        page
    };
    let page = get("");
    assert!(
        page.len() < 250_000,
        "the overview of 10,000 machines is bounded: {} bytes",
        page.len()
    );
    assert_eq!(page.matches("<tr data-machine=").count(), 200);
    assert!(page.contains("machines 1–200 of 10000"), "pager");
    let first_row = page.find("<tr data-machine=").expect("a row");
    assert!(
        page[first_row..].starts_with("<tr data-machine=\"m04242\""),
        "the machine with a problem comes first"
    );
    assert!(page.contains("id=\"filter\""));
    let last = get("?page=49");
    assert!(last.contains("machines 9801–10000 of 10000") && last.contains("previous"));
    let named = get("?name=m0999");
    assert_eq!(named.matches("<tr data-machine=").count(), 10);
    let problems = get("?state=problems&service=web");
    assert_eq!(problems.matches("<tr data-machine=").count(), 1);
    assert!(problems.contains("data-machine=\"m04242\""));
    let dom = chromium(
        &["--dump-dom"],
        &format!("{}&next=/%3Fstate%3Dproblems", login_link(&log)),
    );
    assert!(
        dom.contains("id=\"grid\"") && dom.contains("data-machine=\"m04242\""),
        "{}",
        &dom[..dom.len().min(2000)]
    );
}
