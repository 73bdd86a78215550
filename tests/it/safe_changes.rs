//! Safe changes on a real systemd machine with real services: a commit the
//! service's own checker refuses never switches in (`validate`), a commit
//! that breaks the running service is switched back (`health`, the
//! action), a sandboxed unit sees each release and cannot write it, and
//! stopped units are started by the operator's commands only.

use testkit as common;

use common::container::Machine;
use common::{GitDaemon, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_provision");
const METRICS: &str = "/var/lib/prometheus/node-exporter/provision.prom";

/// A port for a daemon inside a machine (which shares the host's network):
/// distinct per test process, away from the usual ones.
fn port(offset: u16) -> u16 {
    20_000 + (std::process::id() % 20_000) as u16 + offset
}

/// Runs `provision ARGS` inside, asserting the exit code; stdout+stderr.
fn provision(m: &Machine, args: &str, expect: i32) -> String {
    let (code, out) = m.sh_status(&format!("{BIN} {args}"));
    assert_eq!(code, expect, "provision {args}:\n{out}");
    out
}

/// The first service of `provision status --json`.
fn status(m: &Machine) -> serde_json::Value {
    let out = m.sh(&format!("{BIN} status --json"));
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    v["services"][0].clone()
}

fn site(port: u16, root: &str, extra: &str) -> String {
    format!("server {{\n    listen 127.0.0.1:{port};\n    root {root};\n{extra}}}\n")
}

/// How many lines `/var/log/NAME` has (a file a unit appends to).
fn lines(m: &Machine, file: &str) -> usize {
    m.read(file).map_or(0, |t| t.lines().count())
}

/// Debian's nginx, its reloads counted, its default site out of the way,
/// and provision managing one site and its pages.
fn nginx_machine(up: &Upstream, port: u16) -> Machine {
    let m = Machine::boot("web1");
    common::container::install_provision(&m, BIN);
    m.sh("rm -f /etc/nginx/sites-enabled/default && systemctl unmask nginx.service");
    m.put(
        "/etc/systemd/system/nginx.service.d/count.conf",
        "[Service]\nExecReload=\nExecReload=/bin/sh -c 'echo reload >> /var/log/nginx.reloads'\n\
         ExecReload=/usr/sbin/nginx -g 'daemon on; master_process on;' -s reload\n",
        0o644,
    );
    let url = up.url();
    m.put(
        "/etc/provision/config.toml",
        &format!(
            r#"
[[services]]
machine = "web1"
service = "nginx"
upstream = "{url}"
action = "reload"
validate = "echo run >> /var/log/validate.runs; nginx -t"
health = "curl -fsS http://127.0.0.1:{port}/"
health_timeout = "4s"
dirs = [
  {{ local = "/etc/nginx/conf.d/site.conf", link = "nginx/site.conf", file = true }},
  {{ local = "/srv/www", link = "www" }},
]
"#
        ),
        0o644,
    );
    m.sh("systemctl daemon-reload");
    m
}

fn page(m: &Machine, port: u16) -> String {
    m.sh_status(&format!("curl -sS http://127.0.0.1:{port}/")).1
}

#[test]
fn nginx_never_runs_a_commit_it_rejects() {
    common::need_machine!("nginx", "curl");
    let d = GitDaemon::start();
    let up = d.repo("web");
    let port = port(0);
    let good = up.commit(
        "main",
        &[
            ("nginx/site.conf", Some(&site(port, "/srv/www", ""))),
            ("www/index.html", Some("v1\n")),
        ],
        "v1",
    );
    let m = nginx_machine(&up, port);

    // First deployment: nginx is not running, so the timer pass switches
    // the files and leaves it stopped.
    let out = provision(&m, "sync", 0);
    assert!(out.contains("unit nginx.service is not running"), "{out}");
    assert_eq!(m.sh("systemctl is-active nginx || true").trim(), "inactive");
    m.sh("systemctl start nginx");
    assert_eq!(page(&m, port), "v1\n");
    assert_eq!(lines(&m, "/var/log/validate.runs"), 1);

    // A syntax error: nginx -t sees it in the candidate, nothing switches.
    let broken = up.commit(
        "main",
        &[
            (
                "nginx/site.conf",
                Some(&site(port, "/srv/www", "    bogus_directive on;\n")),
            ),
            ("www/index.html", Some("v2\n")),
        ],
        "v2: a typo",
    );
    let out = provision(&m, "sync", 1);
    assert!(
        out.contains(&format!("rejected {} at validate", &broken[..10])),
        "{out}"
    );
    assert!(
        out.contains("unknown directive \"bogus_directive\""),
        "the checker's own words are shown:\n{out}"
    );
    assert!(out.contains("nothing switched"), "{out}");
    assert_eq!(page(&m, port), "v1\n", "old config and pages keep serving");
    assert_eq!(m.read("/srv/www/index.html").as_deref(), Some("v1\n"));
    assert_eq!(m.reloads("nginx"), 0);
    let s = status(&m);
    assert_eq!(s["rejected"]["commit"], broken.as_str());
    assert_eq!(s["rejected"]["stage"], "validate");
    assert_eq!(s["deployed"]["commit"], good.as_str());
    let metrics = m.read(METRICS).expect("metrics file");
    assert!(
        metrics.contains(&format!(
            "provision_rejected_commit_info{{service=\"nginx\",commit=\"{broken}\",stage=\"validate\"}} 1"
        )),
        "{metrics}"
    );
    let table = provision(&m, "status", 0);
    assert!(table.contains("REJECTED"), "{table}");
    assert!(
        table.contains(&format!("nginx: rejected {} at validate", &broken[..10])),
        "{table}"
    );

    // The next pass does not try it again.
    let out = provision(&m, "sync", 0);
    assert!(out.contains("was rejected at validate"), "{out}");
    assert_eq!(
        lines(&m, "/var/log/validate.runs"),
        2,
        "not validated again"
    );

    // A valid config that breaks the page: reverted after the health check,
    // with exactly two reloads (the commit's, then the old release's).
    let no_page = up.commit(
        "main",
        &[
            ("nginx/site.conf", Some(&site(port, "/srv/www/missing", ""))),
            ("www/index.html", Some("v3\n")),
        ],
        "v3: wrong root",
    );
    let out = provision(&m, "sync", 1);
    assert!(
        out.contains(&format!("rejected {} at health", &no_page[..10])),
        "{out}"
    );
    assert!(
        out.contains(&format!("reverted to {}", &good[..10])),
        "{out}"
    );
    assert_eq!(m.reloads("nginx"), 2);
    // nginx applies a reload after its job ended.
    m.wait_until(
        std::time::Duration::from_secs(10),
        "nginx serves v1 again",
        || page(&m, port) == "v1\n",
    );
    let s = status(&m);
    assert_eq!(s["rejected"]["stage"], "health");
    assert_eq!(s["deployed"]["commit"], good.as_str());
    let metrics = m.read(METRICS).expect("metrics file");
    assert!(
        metrics.contains("provision_reverts_total{service=\"nginx\"} 1"),
        "{metrics}"
    );

    // The next good commit deploys normally.
    let fixed = up.commit(
        "main",
        &[
            ("nginx/site.conf", Some(&site(port, "/srv/www", ""))),
            ("www/index.html", Some("v4\n")),
        ],
        "v4",
    );
    let out = provision(&m, "sync", 0);
    assert!(out.contains(&format!("deployed {}", &fixed[..10])), "{out}");
    assert_eq!(m.reloads("nginx"), 3);
    m.wait_until(
        std::time::Duration::from_secs(10),
        "nginx serves v4",
        || page(&m, port) == "v4\n",
    );
    let s = status(&m);
    assert!(s["rejected"].is_null(), "{s}");
    assert_eq!(s["in_sync"], true);
    assert_eq!(s["behind_seconds"], 0);
}

#[test]
fn prometheus_config_is_checked_by_promtool_before_the_switch() {
    common::need_machine!("promtool");
    let d = GitDaemon::start();
    let up = d.repo("prom");
    up.commit(
        "main",
        &[(
            "prometheus/prometheus.yml",
            Some("global:\n  scrape_interval: 15s\n"),
        )],
        "good",
    );
    let m = Machine::boot("prom1");
    let url = up.url();
    m.put(
        "/etc/provision/config.toml",
        &format!(
            r#"
[[services]]
machine = "prom1"
service = "prometheus"
upstream = "{url}"
validate = "promtool check config /etc/prometheus/prometheus.yml"
dirs = [ {{ local = "/etc/prometheus", link = "prometheus" }} ]
"#
        ),
        0o644,
    );
    provision(&m, "sync", 0);
    let bad = up.commit(
        "main",
        &[(
            "prometheus/prometheus.yml",
            Some("global:\n  scrape_interval: banana\n"),
        )],
        "bad",
    );
    let out = provision(&m, "sync", 1);
    assert!(
        out.contains(&format!("rejected {} at validate", &bad[..10])),
        "{out}"
    );
    assert!(
        out.contains("banana"),
        "promtool's message is shown:\n{out}"
    );
    assert_eq!(
        m.read("/etc/prometheus/prometheus.yml").as_deref(),
        Some("global:\n  scrape_interval: 15s\n")
    );
    assert_eq!(status(&m)["rejected"]["stage"], "validate");
}

#[test]
fn a_sandboxed_unit_sees_each_release_and_cannot_write_it() {
    common::need_machine!();
    let d = GitDaemon::start();
    let up = d.repo("sbx");
    up.commit("main", &[("sbx/conf", Some("one\n"))], "one");
    let m = Machine::boot("sbx1");
    // The harness's `/` is a private mount, as in LXC or nspawn: mounts
    // made on the host after the unit started never reach its namespace.
    m.put(
        "/etc/systemd/system/sbx.service",
        "[Service]\nExecStart=/bin/sh -c 'while :; do sleep 1; done'\n\
         ExecReload=/bin/sh -c 'cat /etc/sbx/conf > /run/sbx/seen; \
         if touch /etc/sbx/probe 2>/dev/null; then echo writable; else echo read-only; fi > /run/sbx/write'\n\
         ProtectSystem=strict\nRuntimeDirectory=sbx\n",
        0o644,
    );
    let url = up.url();
    m.put(
        "/etc/provision/config.toml",
        &format!(
            r#"
[[services]]
machine = "sbx1"
service = "sbx"
upstream = "{url}"
action = "reload"
dirs = [ {{ local = "/etc/sbx", link = "sbx" }} ]
"#
        ),
        0o644,
    );
    m.sh("mkdir -p /etc/sbx && systemctl daemon-reload && systemctl start sbx");
    let out = provision(&m, "sync", 0);
    assert!(
        out.contains("bound /etc/sbx into unit sbx.service's own mount namespace"),
        "{out}"
    );
    assert_eq!(m.read("/run/sbx/seen").as_deref(), Some("one\n"));
    assert_eq!(m.read("/run/sbx/write").as_deref(), Some("read-only\n"));

    up.commit("main", &[("sbx/conf", Some("two\n"))], "two");
    provision(&m, "sync", 0);
    assert_eq!(
        m.read("/run/sbx/seen").as_deref(),
        Some("two\n"),
        "the unit saw the new release when it reloaded"
    );
    assert_eq!(m.read("/run/sbx/write").as_deref(), Some("read-only\n"));
}

#[test]
fn operator_commands_start_a_stopped_unit_and_a_hanging_health_check_is_killed() {
    common::need_machine!();
    let d = GitDaemon::start();
    let up = d.repo("web");
    let one = up.commit("main", &[("web/conf", Some("one\n"))], "one");
    let m = Machine::boot("stop1");
    m.put(
        "/etc/systemd/system/web.service",
        "[Service]\nExecStart=/bin/sleep infinity\n\
         ExecReload=/bin/sh -c 'echo reload >> /var/log/web.reloads'\n",
        0o644,
    );
    let url = up.url();
    let config = |health: &str| {
        format!(
            r#"
[[services]]
machine = "stop1"
service = "web"
upstream = "{url}"
action = "reload"
{health}
dirs = [ {{ local = "/etc/web", link = "web" }} ]
"#
        )
    };
    m.put("/etc/provision/config.toml", &config(""), 0o644);
    m.sh("systemctl daemon-reload && systemctl start web");
    provision(&m, "sync", 0);
    m.sh("systemctl stop web");

    up.commit("main", &[("web/conf", Some("two\n"))], "two");
    let out = provision(&m, "sync", 0);
    assert!(out.contains("unit web.service is not running"), "{out}");
    assert_eq!(m.sh("systemctl is-active web || true").trim(), "inactive");
    assert_eq!(m.read("/etc/web/conf").as_deref(), Some("two\n"));

    let out = provision(&m, "rollback web HEAD~1", 0);
    assert!(
        out.contains("start web.service: done, unit active"),
        "{out}"
    );
    assert_eq!(m.sh("systemctl is-active web").trim(), "active");
    assert_eq!(m.read("/etc/web/conf").as_deref(), Some("one\n"));
    let s = status(&m);
    assert_eq!(s["hold"]["kind"], "pinned");
    assert!(s["hold"]["by"].is_string(), "{s}");

    // Nothing to change, but the operator wants the service back.
    m.sh("systemctl stop web");
    let out = provision(&m, &format!("rollback web {}", &one[..10]), 0);
    assert!(
        out.contains("start web.service: done, unit active"),
        "{out}"
    );
    assert_eq!(m.sh("systemctl is-active web").trim(), "active");

    // A health check that hangs is killed, whole process group, at its
    // timeout, and the commit goes back.
    m.put(
        "/etc/provision/config.toml",
        &config("health = \"sleep 600 & sleep 601\"\nhealth_timeout = \"2s\""),
        0o644,
    );
    let three = up.commit("main", &[("web/conf", Some("three\n"))], "three");
    let out = provision(&m, "forward web", 1);
    assert!(
        out.contains(&format!("rejected {} at health", &three[..10])),
        "{out}"
    );
    assert!(
        out.contains("still ran when health_timeout (2s) ended"),
        "{out}"
    );
    assert!(
        out.contains(&format!("reverted to {}", &one[..10])),
        "{out}"
    );
    assert_eq!(m.read("/etc/web/conf").as_deref(), Some("one\n"));
    let (code, left) = m.sh_status("pgrep -f 'sleep 60[01]'");
    assert_ne!(code, 0, "the health check's processes are gone: {left}");
}
