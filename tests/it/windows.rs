//! Change windows on a booted machine: outside every window a new head
//! waits (status, JSON, metrics and `check` say until when), `forward`
//! deploys it anyway, and inside a window it deploys.

use testkit as common;

use common::container::Machine;
use common::GitDaemon;

const BIN: &str = env!("CARGO_BIN_EXE_provision");

/// `HH:MM` (UTC) of now plus `minutes`.
fn hhmm(minutes: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let t = (now / 60 + minutes).rem_euclid(1440);
    format!("{:02}:{:02}", t / 60, t % 60)
}

fn config(up: &str, window: &str) -> String {
    format!(
        "[[services]]\nmachine = \"win1\"\nservice = \"web\"\nupstream = \"{up}\"\nwindows = [\"{window}\"]\n\
         dirs = [ {{ local = \"/etc/web\", link = \"web\" }} ]\n"
    )
}

fn status(m: &Machine) -> serde_json::Value {
    let out = m.sh(&format!("{BIN} status --json"));
    let doc: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    doc["services"][0].clone()
}

#[test]
fn a_head_waits_outside_the_windows_and_deploys_inside_or_on_forward() {
    common::need_machine!();
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    let first = up.commit("main", &[("web/web.conf", Some("one\n"))], "one");
    let m = Machine::boot("win1");
    common::container::install_provision(&m, BIN);
    m.put(
        "/etc/systemd/system/web.service",
        "[Service]\nExecStart=/bin/sleep infinity\n",
        0o644,
    );
    // A window that opens in two hours, for an hour.
    let outside = format!("{}-{} UTC", hhmm(120), hhmm(180));
    m.put(
        "/etc/provision/config.toml",
        &config(&up.url(), &outside),
        0o644,
    );
    let (code, out) = m.sh_status(&format!("{BIN} sync"));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        status(&m)["deployed"]["commit"],
        first.as_str(),
        "a first deployment does not wait"
    );

    let second = up.commit("main", &[("web/web.conf", Some("two\n"))], "two");
    let (code, out) = m.sh_status(&format!("{BIN} sync"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("outside every change window"), "{out}");
    assert_eq!(m.read("/etc/web/web.conf").as_deref(), Some("one\n"));
    let s = status(&m);
    assert_eq!(s["deployed"]["commit"], first.as_str(), "{s}");
    assert_eq!(s["window"]["commit"], second.as_str(), "{s}");
    let next = s["window"]["next_open"].as_u64().expect("next_open");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        next > now + 110 * 60 && next <= now + 121 * 60,
        "the next window opens in about two hours: {next} (now {now})"
    );
    assert!(m.sh(&format!("{BIN} status")).contains("no (window)"));
    let metrics = m
        .read("/var/lib/prometheus/node-exporter/provision.prom")
        .unwrap_or_default();
    assert!(
        metrics.contains(&format!(
            "provision_window_next_open_timestamp_seconds{{service=\"web\"}} {next}"
        )),
        "{metrics}"
    );
    let check = m.sh(&format!("{BIN} check"));
    assert!(
        check.contains("web: change windows") && check.contains("next opens"),
        "{check}"
    );

    // forward overrides the window.
    let (code, out) = m.sh_status(&format!("{BIN} forward web"));
    assert_eq!(code, 0, "{out}");
    assert_eq!(status(&m)["deployed"]["commit"], second.as_str(), "{out}");

    // Inside a window, a new head deploys.
    let third = up.commit("main", &[("web/web.conf", Some("three\n"))], "three");
    let inside = format!("{}-{} UTC", hhmm(-5), hhmm(55));
    m.put(
        "/etc/provision/config.toml",
        &config(&up.url(), &inside),
        0o644,
    );
    let (code, out) = m.sh_status(&format!("{BIN} sync"));
    assert_eq!(code, 0, "{out}");
    assert_eq!(status(&m)["deployed"]["commit"], third.as_str(), "{out}");
    assert_eq!(m.read("/etc/web/web.conf").as_deref(), Some("three\n"));
    assert!(status(&m)["window"].is_null());
    assert!(m.sh(&format!("{BIN} check")).contains("open now"));
}
