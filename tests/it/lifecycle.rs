//! The machine stays right across config changes and reboots, on a real
//! systemd: a service added to the config gets a running timer with no
//! reboot, one removed stops and shows as orphaned until `forget`, and a
//! broken config never keeps mounts from coming back at boot.

use testkit as common;

use std::time::Duration;

use common::container::Machine;
use common::host::Host;
use common::{GitDaemon, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_provision");

/// A unit that copies the file it reads at start into /run/NAME.seen.
fn unit(name: &str) -> String {
    format!(
        "[Service]\nExecStartPre=/bin/sh -c 'cat /etc/{name}/{name}.conf > /run/{name}.seen 2>&1 || true'\n\
         ExecStart=/bin/sleep infinity\nExecReload=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
    )
}

fn service(host: &str, name: &str) -> String {
    format!(
        "\n[[services]]\nmachine = \"{host}\"\nservice = \"{name}\"\naction = \"reload\"\ninterval = \"2s\"\n\
         dirs = [ {{ local = \"/etc/{name}\", link = \"{name}\" }} ]\n"
    )
}

fn config(host: &str, up: &Upstream, names: &[&str]) -> String {
    let mut c = format!("[global]\nupstream = \"{}\"\n", up.url());
    for n in names {
        c.push_str(&service(host, n));
    }
    c
}

fn active(m: &Machine, unit: &str) -> bool {
    m.sh(&format!("systemctl is-active {unit} || true")).trim() == "active"
}

fn status_of(m: &Machine, name: &str) -> Option<serde_json::Value> {
    let out = m.sh(&format!("{BIN} status --json"));
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    v["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

#[test]
fn config_changes_start_and_stop_timers_without_a_reboot_and_forget_cleans_up() {
    common::need_machine!();
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    up.commit(
        "main",
        &[
            ("web/web.conf", Some("web one\n")),
            ("api/api.conf", Some("api one\n")),
        ],
        "seed",
    );
    let m = Machine::boot("life1");
    common::container::install_provision(&m, BIN);
    m.put("/etc/systemd/system/web.service", &unit("web"), 0o644);
    m.put("/etc/systemd/system/api.service", &unit("api"), 0o644);
    m.sh("systemctl daemon-reload && systemctl enable --now provision-config.path");
    m.sh("systemctl start web api");

    // Writing the config is all it takes: the timer runs and deploys.
    m.put(
        "/etc/provision/config.toml",
        &config("life1", &up, &["web"]),
        0o644,
    );
    m.wait_until(Duration::from_secs(30), "web's timer is active", || {
        active(&m, "provision@web.timer")
    });
    m.wait_until(Duration::from_secs(30), "web's timer deploys", || {
        m.read("/etc/web/web.conf").as_deref() == Some("web one\n")
    });

    // A second service added to the config gets its timer too.
    m.put(
        "/etc/provision/config.toml",
        &config("life1", &up, &["web", "api"]),
        0o644,
    );
    m.wait_until(Duration::from_secs(30), "api's timer is active", || {
        active(&m, "provision@api.timer")
    });
    m.wait_until(Duration::from_secs(30), "api's timer deploys", || {
        m.read("/etc/api/api.conf").as_deref() == Some("api one\n")
    });

    // Removed from the config: its timer stops, its files stay, status
    // shows it orphaned.
    m.put(
        "/etc/provision/config.toml",
        &config("life1", &up, &["api"]),
        0o644,
    );
    m.wait_until(Duration::from_secs(30), "web's timer stops", || {
        !active(&m, "provision@web.timer")
    });
    assert!(active(&m, "provision@api.timer"));
    assert_eq!(m.read("/etc/web/web.conf").as_deref(), Some("web one\n"));
    let web = status_of(&m, "web").expect("web still in status");
    assert_eq!(web["state"], "orphaned");
    assert_eq!(web["mounts_ok"], true, "{web}");
    assert_eq!(web["unit"], "web.service");
    let table = m.sh(&format!("{BIN} status"));
    assert!(table.contains("orphaned"), "{table}");
    assert!(table.contains("provision forget web"), "{table}");

    let (code, out) = m.sh_status(&format!("{BIN} forget api"));
    assert_eq!(code, 2, "still configured: {out}");
    let out = m.sh(&format!("{BIN} forget web"));
    assert!(out.contains("web: unmounted /etc/web"), "{out}");
    assert!(m.sh("findmnt -n /etc/web || true").trim().is_empty());
    assert!(status_of(&m, "web").is_none(), "web is gone from status");
    assert!(m.read("/var/lib/provision/web/state.json").is_none());
}

#[test]
fn a_broken_config_and_no_server_still_restore_mounts_before_the_service_starts() {
    common::need_machine!();
    let mut d = GitDaemon::start();
    let up = d.repo("cfg");
    up.commit("main", &[("web/web.conf", Some("deployed\n"))], "seed");
    let mut m = Machine::boot("life2");
    common::container::install_provision(&m, BIN);
    m.put("/etc/systemd/system/web.service", &unit("web"), 0o644);
    m.put(
        "/etc/provision/config.toml",
        &config("life2", &up, &["web"]),
        0o644,
    );
    m.sh("systemctl daemon-reload && systemctl enable web.service && systemctl start web");
    m.sh(&format!("{BIN} sync"));
    assert_eq!(m.read("/etc/web/web.conf").as_deref(), Some("deployed\n"));

    // A typo, a daemon-reload (the generator keeps the last valid config's
    // ordering), the server gone, a reboot.
    m.put("/etc/provision/config.toml", "[[services]\nbroken", 0o644);
    m.sh("systemctl daemon-reload");
    let dropin = m.read("/run/systemd/generator/web.service.d/50-provision.conf");
    assert!(
        dropin
            .as_deref()
            .is_some_and(|t| t.contains("After=provision-mount@web.service")),
        "{dropin:?}"
    );
    d.stop();
    m.poweroff();
    m.boot_again();
    assert_eq!(m.sh("systemctl is-active web").trim(), "active");
    assert_eq!(
        m.read("/run/web.seen").as_deref(),
        Some("deployed\n"),
        "web started after its mount was restored"
    );
    let journal = m.journal("provision-mount@web.service");
    assert!(
        journal.contains("restoring the mounts recorded in the state files"),
        "{journal}"
    );
}

#[test]
fn check_warns_when_releases_would_not_survive_a_reboot() {
    let h = Host::new();
    let text = common::host::app_config(
        "https://git.example.net/r",
        "mount = \"/dev/shm/provision\"",
    );
    h.write_config(&text);
    let out = h.run(&["check"]);
    let all = common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("`mount` of app, /dev/shm/provision, is on tmpfs"),
        "{all}"
    );
}

#[test]
fn passes_run_by_systemd_log_structured_journal_entries() {
    common::need_machine!();
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    let commit = up.commit("main", &[("web/web.conf", Some("one\n"))], "seed");
    let m = Machine::boot("life3");
    common::container::install_provision(&m, BIN);
    m.put("/etc/systemd/system/web.service", &unit("web"), 0o644);
    m.put(
        "/etc/provision/config.toml",
        &config("life3", &up, &["web"]),
        0o644,
    );
    m.sh("systemctl daemon-reload && systemctl start web && systemctl start provision@web.service");
    m.sh(&format!(
        "systemd-run --wait --quiet {BIN} freeze web --reason journal"
    ));
    let entries = m.sh("journalctl --no-pager -o json PROVISION_EVENT=deploy SERVICE=web");
    let deploy: serde_json::Value = serde_json::from_str(
        entries
            .lines()
            .find(|l| l.contains("deployed"))
            .unwrap_or_else(|| panic!("no deploy entry:\n{entries}")),
    )
    .expect("journal JSON");
    assert_eq!(deploy["SERVICE"], "web");
    assert_eq!(deploy["COMMIT"], commit.as_str());
    assert_eq!(deploy["MESSAGE_ID"], "8b5d6e0f1c2a4b7e9d3f6a1c5e7b9d01");
    assert_eq!(deploy["PRIORITY"], "5", "notice");
    assert_eq!(deploy["SYSLOG_IDENTIFIER"], "provision");
    assert_eq!(deploy["_SYSTEMD_UNIT"], "provision@web.service");
    let freeze = m.sh("journalctl --no-pager -o cat PROVISION_EVENT=freeze SERVICE=web");
    assert!(freeze.contains("web: frozen at"), "{freeze}");
    // A command run from a terminal keeps plain lines.
    let out = m.sh(&format!("{BIN} unfreeze web"));
    assert!(out.contains("web: no longer frozen"), "{out}");
}
