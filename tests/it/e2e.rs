//! End to end on a real systemd (PID 1 in a namespace container), a real
//! git daemon, real bind mounts and real D-Bus: what an operator of a
//! machine sees after `provision sync`, a timer run, and a reboot.

use testkit as common;

use std::time::Duration;

use common::container::Machine;
use common::{GitDaemon, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_provision");

/// A unit that records every reload in /var/log/NAME.reloads, and at start
/// copies the file it reads into /run/NAME.seen (to prove mount ordering).
fn demo_unit(name: &str, conf: &str, reload: &str) -> String {
    format!(
        "[Unit]\nDescription=demo {name}\n\n[Service]\nExecStartPre=/bin/sh -c 'cat {conf} > /run/{name}.seen 2>&1 || true'\nExecStart=/bin/sleep infinity\nExecReload={reload}\n\n[Install]\nWantedBy=multi-user.target\n"
    )
}

fn recording_reload(name: &str) -> String {
    format!("/bin/sh -c 'echo reload >> /var/log/{name}.reloads'")
}

/// Installs provision's units and generator into the machine, pointing at
/// the binary under test, plus the demo units and the config.
fn install(m: &Machine, config: &str) {
    common::container::install_provision(m, BIN);
    m.put(
        "/etc/systemd/system/web.service",
        &demo_unit("web", "/etc/web/web.conf", &recording_reload("web")),
        0o644,
    );
    m.put(
        "/etc/systemd/system/other.service",
        &demo_unit("other", "/etc/other/other.conf", &recording_reload("other")),
        0o644,
    );
    m.put(
        "/etc/systemd/system/bad.service",
        &demo_unit("bad", "/etc/bad/bad.conf", "/bin/false"),
        0o644,
    );
    m.put("/etc/provision/config.toml", config, 0o644);
}

/// Config for `host`: web (package, owner, dir + single file), other, and
/// optionally bad (whose reload always fails).
fn config(host: &str, up: &Upstream, with_bad: bool) -> String {
    let url = up.url();
    let mut c = format!(
        r#"
[global]
upstream = "{url}"
interval = "1s"

[[services]]
machine = "{host}"
service = "web"
package = "hello"
user = "www-data"
action = "reload"
dirs = [
  {{ local = "/etc/web", link = "web/etc", readonly = false }},
  {{ local = "/etc/default/web", link = "web/default", file = true, readonly = false }},
]

[[services]]
machine = "{host}"
service = "other"
action = "reload"
dirs = [ {{ local = "/etc/other", link = "other", readonly = true }} ]
"#
    );
    if with_bad {
        c.push_str(&format!(
            "\n[[services]]\nmachine = \"{host}\"\nservice = \"bad\"\naction = \"reload\"\ndirs = [ {{ local = \"/etc/bad\", link = \"bad\" }} ]\n"
        ));
    }
    c
}

fn seed(up: &Upstream) -> String {
    up.commit(
        "main",
        &[
            ("web/etc/web.conf", Some("greeting = one\n")),
            ("web/default", Some("OPTS=1\n")),
            ("other/other.conf", Some("other = one\n")),
            ("bad/bad.conf", Some("bad = one\n")),
        ],
        "seed",
    )
}

fn sync(m: &Machine, expect: i32) -> String {
    let (code, out) = m.sh_status(&format!("{BIN} sync"));
    assert_eq!(code, expect, "provision sync output:\n{out}");
    out
}

fn start_units(m: &Machine, units: &[&str]) {
    m.sh(&format!(
        "systemctl daemon-reload && systemctl start {}",
        units.join(" ")
    ));
}

#[test]
fn sync_provisions_updates_once_and_leaves_unchanged_services_alone() {
    common::need_machine!();
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    seed(&up);
    let m = Machine::boot("node1");
    install(&m, &config("node1", &up, false));
    start_units(&m, &["web", "other"]);

    let out = sync(&m, 0);
    assert!(out.contains("web: installed package hello"), "{out}");
    assert!(m
        .sh_status("dpkg-query -W -f='${Status}' hello")
        .1
        .contains("install ok installed"));
    assert_eq!(
        m.read("/etc/web/web.conf").as_deref(),
        Some("greeting = one\n")
    );
    assert_eq!(m.read("/etc/default/web").as_deref(), Some("OPTS=1\n"));
    assert_eq!(m.sh("stat -c %U /etc/web/web.conf").trim(), "www-data");
    assert_eq!(m.sh("systemctl is-active web").trim(), "active");
    assert!(m.sh("findmnt -n -o TARGET /etc/web").contains("/etc/web"));
    let first_reloads = m.reloads("web");
    assert_eq!(first_reloads, 1, "first deployment mounts and reloads once");

    up.commit(
        "main",
        &[("web/etc/web.conf", Some("greeting = two\n"))],
        "web: two",
    );
    let out = sync(&m, 0);
    assert!(out.contains("web: deployed"), "{out}");
    assert_eq!(
        m.read("/etc/web/web.conf").as_deref(),
        Some("greeting = two\n")
    );
    assert_eq!(m.reloads("web"), 2, "exactly one reload for one change");
    assert_eq!(m.reloads("other"), 1, "other's files did not change");

    let out = sync(&m, 0);
    assert!(out.contains("web: up to date"), "{out}");
    assert_eq!(m.reloads("web"), 2, "no change, no reload");

    up.commit(
        "main",
        &[("other/other.conf", Some("other = two\n"))],
        "other: two",
    );
    sync(&m, 0);
    assert_eq!(
        m.read("/etc/other/other.conf").as_deref(),
        Some("other = two\n")
    );
    assert_eq!(m.reloads("other"), 2);
    assert_eq!(
        m.reloads("web"),
        2,
        "a change to another service's paths does not reload web"
    );

    up.commit("main", &[("web/default", Some("OPTS=2\n"))], "web: default");
    sync(&m, 0);
    assert_eq!(
        m.read("/etc/default/web").as_deref(),
        Some("OPTS=2\n"),
        "single-file mount updated"
    );
    assert_eq!(m.reloads("web"), 3);

    let (code, out) = m.sh_status("touch /etc/other/new-file");
    assert_ne!(code, 0, "readonly = true gives a read-only mount");
    assert!(out.contains("Read-only file system"), "{out}");

    // A mount removed by hand is repaired by the next pass, and the service
    // is told (it may have read the directory underneath meanwhile).
    m.sh("umount /etc/web");
    assert_eq!(m.read("/etc/web/web.conf"), None);
    let out = sync(&m, 0);
    assert!(out.contains("web: mounted /etc/web"), "{out}");
    assert_eq!(
        m.read("/etc/web/web.conf").as_deref(),
        Some("greeting = two\n")
    );
    assert_eq!(m.reloads("web"), 4);

    // A path dropped from `dirs` is unmounted, not left on an old release.
    let dropped = "  { local = \"/etc/default/web\", link = \"web/default\", file = true, readonly = false },\n";
    let without_default = config("node1", &up, false).replace(dropped, "");
    assert!(
        !without_default.contains("/etc/default/web"),
        "{without_default}"
    );
    m.put("/etc/provision/config.toml", &without_default, 0o644);
    let out = sync(&m, 0);
    assert!(out.contains("web: unmounted /etc/default/web"), "{out}");
    let (code, _) = m.sh_status("findmnt /etc/default/web");
    assert_ne!(code, 0, "no mount left on /etc/default/web");
}

#[test]
fn a_failing_reload_fails_that_service_only() {
    common::need_machine!();
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    seed(&up);
    let m = Machine::boot("node2");
    install(&m, &config("node2", &up, true));
    start_units(&m, &["web", "other", "bad"]);
    let out = sync(&m, 1);
    assert!(out.contains("bad: pass failed"), "{out}");
    assert!(
        out.contains("bad.service") && out.contains("failed"),
        "{out}"
    );
    assert_eq!(
        m.read("/etc/web/web.conf").as_deref(),
        Some("greeting = one\n"),
        "web still reconciled"
    );
    assert_eq!(m.reloads("web"), 1);
    assert_eq!(m.read("/etc/bad/bad.conf").as_deref(), Some("bad = one\n"));

    assert!(
        out.contains("nothing to revert to (first deployment)"),
        "{out}"
    );

    // The failed action is retried by the next pass, and fails again.
    let out = sync(&m, 1);
    assert!(out.contains("bad: pass failed"), "{out}");
    assert!(out.contains("web: up to date"), "{out}");
    assert_eq!(m.reloads("web"), 1);
}

#[test]
fn the_timer_drives_passes_by_itself() {
    common::need_machine!();
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    seed(&up);
    let m = Machine::boot("node3");
    install(&m, &config("node3", &up, false));
    start_units(&m, &["web", "other", "provision@web.timer"]);
    m.wait_until(
        Duration::from_secs(30),
        "the timer's first pass mounts /etc/web",
        || m.read("/etc/web/web.conf").as_deref() == Some("greeting = one\n"),
    );
    up.commit(
        "main",
        &[("web/etc/web.conf", Some("greeting = timer\n"))],
        "web: timer",
    );
    m.wait_until(
        Duration::from_secs(30),
        "a later timer pass deploys the pushed change",
        || m.read("/etc/web/web.conf").as_deref() == Some("greeting = timer\n"),
    );
    let journal = m.journal("provision@web.service");
    assert!(journal.contains("web: deployed"), "{journal}");
}

#[test]
fn after_a_reboot_mounts_are_restored_offline_before_the_service_starts() {
    common::need_machine!();
    let mut d = GitDaemon::start();
    let up = d.repo("cfg");
    seed(&up);
    up.commit(
        "main",
        &[("web/etc/web.conf", Some("greeting = deployed\n"))],
        "web: deployed",
    );
    let mut m = Machine::boot("node4");
    install(&m, &config("node4", &up, false));
    m.sh("systemctl enable web.service other.service");
    start_units(&m, &["web", "other"]);
    sync(&m, 0);
    assert_eq!(
        m.read("/etc/web/web.conf").as_deref(),
        Some("greeting = deployed\n")
    );

    d.stop();
    m.poweroff();
    m.boot_again();
    assert_eq!(
        m.read("/etc/web/web.conf").as_deref(),
        Some("greeting = deployed\n"),
        "mount restored"
    );
    assert_eq!(m.read("/etc/default/web").as_deref(), Some("OPTS=1\n"));
    assert_eq!(m.sh("systemctl is-active web").trim(), "active");
    assert_eq!(
        m.read("/run/web.seen").as_deref(),
        Some("greeting = deployed\n"),
        "web started after its mounts were restored"
    );
    let (code, out) = m.sh_status(&format!("{BIN} sync web"));
    assert_eq!(
        code, 1,
        "no network: the pass fails but changes nothing\n{out}"
    );
    assert_eq!(
        m.read("/etc/web/web.conf").as_deref(),
        Some("greeting = deployed\n")
    );
}

#[test]
fn rollback_reloads_once_stays_pinned_under_the_timer_and_forward_returns() {
    common::need_machine!();
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    seed(&up);
    up.commit(
        "main",
        &[("web/etc/web.conf", Some("greeting = two\n"))],
        "web: two",
    );
    let m = Machine::boot("node5");
    install(&m, &config("node5", &up, false));
    start_units(&m, &["web", "other"]);
    sync(&m, 0);
    assert_eq!(
        m.read("/etc/web/web.conf").as_deref(),
        Some("greeting = two\n")
    );
    let before = m.reloads("web");

    let (code, out) = m.sh_status(&format!("{BIN} rollback web HEAD~1"));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        m.read("/etc/web/web.conf").as_deref(),
        Some("greeting = one\n")
    );
    assert_eq!(m.reloads("web"), before + 1, "the rollback reloads once");

    // Upstream moves on while the timer runs passes: the pin holds.
    up.commit(
        "main",
        &[("web/etc/web.conf", Some("greeting = three\n"))],
        "web: three",
    );
    m.sh("systemctl start provision@web.timer");
    m.wait_until(
        Duration::from_secs(30),
        "a timer pass runs while pinned",
        || {
            m.journal("provision@web.service")
                .contains("pinned (rollback to")
        },
    );
    assert_eq!(
        m.read("/etc/web/web.conf").as_deref(),
        Some("greeting = one\n")
    );
    assert_eq!(m.reloads("web"), before + 1, "no reload while pinned");

    let (code, out) = m.sh_status(&format!("{BIN} forward web"));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        m.read("/etc/web/web.conf").as_deref(),
        Some("greeting = three\n")
    );
    assert_eq!(m.reloads("web"), before + 2);
}

#[test]
fn a_freeze_survives_a_reboot() {
    common::need_machine!();
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    seed(&up);
    let mut m = Machine::boot("node6");
    install(&m, &config("node6", &up, false));
    m.sh("systemctl enable web.service other.service");
    start_units(&m, &["web", "other"]);
    sync(&m, 0);
    m.sh(&format!("{BIN} freeze web --reason 'change freeze'"));
    m.poweroff();
    m.boot_again();
    up.commit(
        "main",
        &[("web/etc/web.conf", Some("greeting = after\n"))],
        "web: after",
    );
    let out = sync(&m, 0);
    assert!(
        out.contains("web: frozen at ")
            && out.contains("(upstream at ")
            && out.contains("frozen (change freeze)"),
        "{out}"
    );
    assert!(out.contains("other: deployed"), "only web is frozen: {out}");
    assert_eq!(
        m.read("/etc/web/web.conf").as_deref(),
        Some("greeting = one\n")
    );
    let (_, history) = m.sh_status(&format!("{BIN} history web"));
    assert!(
        history
            .lines()
            .next()
            .is_some_and(|l| l.starts_with('^') && l.contains("web: after")),
        "{history}"
    );
}

const METRICS: &str = "/var/lib/prometheus/node-exporter/provision.prom";

/// `config` writing metrics where node_exporter reads them, with
/// `policy` as web's drift policy.
fn observed_config(host: &str, up: &Upstream, policy: &str) -> String {
    config(host, up, false)
        .replacen(
            "[global]\n",
            "[global]\nmetrics_dir = \"/var/lib/prometheus/node-exporter\"\n",
            1,
        )
        .replacen(
            "service = \"web\"\n",
            &format!("service = \"web\"\ndrift = \"{policy}\"\n"),
            1,
        )
}

/// web's entry of `provision status --json`.
fn web_status(m: &Machine) -> serde_json::Value {
    let (code, out) = m.sh_status(&format!("{BIN} status --json web 2>/dev/null"));
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    v["services"][0].clone()
}

/// The value of web's sample of `metric` (optionally with more labels).
fn web_metric(m: &Machine, metric: &str, labels: &str) -> Option<f64> {
    let text = m.read(METRICS).expect("metrics file");
    let series = format!("{metric}{{service=\"web\"{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series).and_then(|v| v.parse().ok()))
}

#[test]
fn drift_through_etc_is_shown_diffed_and_restored_and_mounts_and_units_watched() {
    common::need_machine!();
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    let first = seed(&up);
    let m = Machine::boot("watch1");
    install(&m, &observed_config("watch1", &up, "restore"));
    start_units(&m, &["web", "other"]);
    sync(&m, 0);
    assert_eq!(web_metric(&m, "provision_unit_active", ""), Some(1.0));
    assert_eq!(web_metric(&m, "provision_mounts_ok", ""), Some(1.0));
    let reloads_before = m.reloads("web");

    // An edit through the mounted path is drift: status, diff, metrics.
    m.sh("echo 'greeting = local' > /etc/web/web.conf");
    let s = web_status(&m);
    assert_eq!(s["drift"]["count"], 1, "{s}");
    assert_eq!(s["drift"]["files"][0]["path"], "/etc/web/web.conf");
    assert_eq!(s["unit_state"], "active");
    assert_eq!(s["mounts_ok"], true);
    let (code, diff) = m.sh_status(&format!("{BIN} diff web"));
    assert_eq!(code, 1, "{diff}");
    assert!(
        diff.contains("-greeting = one\n+greeting = local"),
        "{diff}"
    );

    let out = sync(&m, 0);
    assert!(
        out.contains("web: restored 1 locally changed path(s)"),
        "{out}"
    );
    assert_eq!(
        m.read("/etc/web/web.conf").as_deref(),
        Some("greeting = one\n")
    );
    assert_eq!(m.reloads("web"), reloads_before + 1, "the unit is told");
    assert_eq!(web_metric(&m, "provision_drift_files", ""), Some(0.0));
    assert_eq!(
        web_metric(
            &m,
            "provision_actions_total",
            ",action=\"reload\",result=\"ok\""
        ),
        Some((reloads_before + 1) as f64)
    );
    assert_eq!(m.sh_status(&format!("{BIN} diff web")).0, 0);

    // A mount removed by hand shows in status until the next pass.
    m.sh("umount /etc/web");
    let s = web_status(&m);
    assert_eq!(s["mounts_ok"], false);
    assert_eq!(s["mounts"][0]["state"], "missing");
    let table = m.sh(&format!("{BIN} status web"));
    assert!(table.contains("1/2"), "{table}");
    assert!(table.contains("web: mount /etc/web: missing"), "{table}");
    sync(&m, 0);
    assert_eq!(web_status(&m)["mounts_ok"], true);

    // A stopped unit is seen by status and by the next pass's metrics.
    m.sh("systemctl stop web");
    assert_eq!(web_status(&m)["unit_state"], "inactive");
    sync(&m, 0);
    assert_eq!(web_metric(&m, "provision_unit_active", ""), Some(0.0));
    m.sh("systemctl start web");

    // Frozen while upstream moves: behind in status and in metrics.
    m.sh(&format!("{BIN} freeze web --reason audit"));
    let second = up.commit(
        "main",
        &[("web/etc/web.conf", Some("greeting = two\n"))],
        "two",
    );
    sync(&m, 0);
    let s = web_status(&m);
    assert_eq!(s["state"], "frozen");
    assert_eq!(s["in_sync"], false);
    assert_eq!(s["deployed"]["commit"], first.as_str());
    assert_eq!(s["upstream"]["commit"], second.as_str());
    assert_eq!(web_metric(&m, "provision_in_sync", ""), Some(0.0));
    assert_eq!(web_metric(&m, "provision_frozen", ""), Some(1.0));
    assert_eq!(
        web_metric(
            &m,
            "provision_upstream_commit_info",
            &format!(",commit=\"{second}\"")
        ),
        Some(1.0)
    );
}

#[test]
fn warn_policy_keeps_an_edit_made_through_etc_and_reports_it() {
    common::need_machine!();
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    let first = seed(&up);
    let m = Machine::boot("warn1");
    install(&m, &observed_config("warn1", &up, "warn"));
    start_units(&m, &["web", "other"]);
    sync(&m, 0);
    let reloads_before = m.reloads("web");

    m.sh("echo 'greeting = local' > /etc/web/web.conf");
    let out = sync(&m, 0);
    assert!(
        out.contains("web: drift (policy warn): 1 local change(s) kept"),
        "{out}"
    );
    assert_eq!(
        m.read("/etc/web/web.conf").as_deref(),
        Some("greeting = local\n")
    );
    assert_eq!(m.reloads("web"), reloads_before, "nothing to tell the unit");
    assert_eq!(web_metric(&m, "provision_drift_files", ""), Some(1.0));

    up.commit(
        "main",
        &[("web/etc/web.conf", Some("greeting = two\n"))],
        "two",
    );
    let out = sync(&m, 1);
    assert!(
        out.contains("web: pass failed, last good release kept: not deploying"),
        "{out}"
    );
    assert_eq!(
        m.read("/etc/web/web.conf").as_deref(),
        Some("greeting = local\n")
    );
    let s = web_status(&m);
    assert_eq!(s["deployed"]["commit"], first.as_str());
    assert_eq!(s["in_sync"], false);
    assert_eq!(s["drift"]["count"], 1);
    assert_eq!(web_metric(&m, "provision_last_pass_success", ""), Some(0.0));
    assert_eq!(
        web_metric(&m, "provision_pass_failures_total", ""),
        Some(1.0)
    );
    assert_eq!(web_metric(&m, "provision_drift_files", ""), Some(1.0));
}
