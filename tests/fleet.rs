//! `provision fleet` against three booted machines, each with its own real
//! sshd on a loopback port, through an operator-side ssh config with pinned
//! host keys: status (table and JSON), actions on one machine only, a
//! powered-off machine, a changed host key, the config read from its
//! repository, and an inventory Ansible can use.

use testkit as common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
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

fn config(up: &Upstream) -> String {
    format!(
        "[[services]]\nmachine = [\"fleet1\", \"fleet2\", \"fleet3\"]\nservice = \"web\"\n\
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
    let text = config(&up);
    up.commit(
        "main",
        &[("provision/config.toml", Some(&text))],
        "config in git",
    );
    let first_config = up.head("main");
    let op = Operator {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    common::ssh_keygen(&op.path("operator"));
    fs::write(op.path("config.toml"), &text).expect("writing the config");
    let mut ssh_config = String::new();
    let mut known = String::new();
    let mut machines = Vec::new();
    for name in NAMES {
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
        machines.push(machine(name, &text, &op, port));
    }
    fs::write(op.path("known_hosts"), &known).expect("known_hosts");
    fs::write(op.path("ssh_config"), &ssh_config).expect("ssh_config");

    // Every machine, with its deployed commit.
    let out = op.fleet(&["status"]);
    let table = common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{table}");
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
        let mut children = Vec::new();
        let mut targets = String::new();
        for (name, m) in NAMES.iter().zip(&machines) {
            let port = common::free_port();
            children.push(
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
        fs::write(
            op.path("prometheus.yml"),
            format!("global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: node\n    static_configs:\n{targets}"),
        )
        .expect("prometheus.yml");
        children.push(
            Command::new("prometheus")
                .arg(format!(
                    "--config.file={}",
                    op.path("prometheus.yml").display()
                ))
                .arg(format!("--storage.tsdb.path={}", op.path("tsdb").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("prometheus"),
        );
        let url = format!("http://127.0.0.1:{prom_port}");
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
        for mut c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    // Several machines without --yes and without a terminal: refused.
    let out = op.fleet(&["freeze", "web"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));

    // The config straight from its repository.
    let out = Command::new(BIN)
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

/// A stand-in for ssh that runs the remote command here, so the fan-out
/// and its output can be checked without machines.
fn stand_in(dir: &Path) -> PathBuf {
    let path = dir.join("fake-ssh");
    fs::write(
        &path,
        "#!/bin/sh\nwhile [ \"$1\" != \"--\" ]; do shift; done\nshift; shift\nexec sh -c \"$1\"\n",
    )
    .expect("writing the stand-in");
    let out = Command::new("chmod")
        .arg("+x")
        .arg(&path)
        .output()
        .expect("chmod");
    assert!(out.status.success());
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
