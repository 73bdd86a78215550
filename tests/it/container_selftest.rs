//! Self-test of the test-machine harness in `tests/common/container.rs`:
//! systemd boots as PID 1 in namespaces, units and timers run, mounts stay
//! inside, a reboot keeps files but not mounts, machines run side by side.

use testkit as common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::container::{require_containers, Machine, MACHINES_DIR};

fn is_active(m: &Machine, unit: &str) -> bool {
    m.sh_status(&format!("systemctl is-active --quiet {unit}"))
        .0
        == 0
}

/// Host mount points (from the test process's own mount namespace).
fn host_mountpoints() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .expect("reading /proc/self/mountinfo")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .collect()
}

#[test]
fn boots_runs_units_and_timers() {
    if !require_containers() {
        return;
    }
    let m = Machine::boot("selftest-units");

    assert_eq!(m.hostname(), "selftest-units");
    assert_eq!(m.sh("hostname").trim(), "selftest-units");
    assert_eq!(m.sh("cat /etc/hostname").trim(), "selftest-units");
    let state = m.sh_status("systemctl is-system-running").1;
    assert!(
        matches!(state.trim(), "running" | "degraded"),
        "is-system-running: {state}"
    );
    // systemd is PID 1 inside, and its host PID is what pid() says.
    assert_eq!(m.sh("cat /proc/1/comm").trim(), "systemd");
    assert_eq!(
        fs::read_to_string(format!("/proc/{}/comm", m.pid()))
            .expect("reading the machine's PID 1 comm on the host")
            .trim(),
        "systemd"
    );
    // It is a container with its own cgroup tree and the masks in place.
    assert_eq!(
        m.sh("systemd-detect-virt --container").trim(),
        "container-other"
    );
    let host_cgroup = fs::read_to_string(format!("/proc/{}/cgroup", m.pid()))
        .expect("reading the machine's PID 1 cgroup on the host");
    assert!(
        host_cgroup.contains("/provision-machines/") && host_cgroup.contains("/init.scope"),
        "PID 1 is not in a cgroup of its own: {host_cgroup}"
    );
    let tree = m.sh("ls /sys/fs/cgroup");
    assert!(
        tree.contains("init.scope") && tree.contains("system.slice"),
        "/sys/fs/cgroup inside is not the machine's own tree: {tree}"
    );
    assert_eq!(
        m.sh_status("systemctl is-enabled ssh.service").1.trim(),
        "masked"
    );

    // The project's binary is visible inside at the same path.
    m.sh(&format!("test -x {}", env!("CARGO_BIN_EXE_provision")));

    // Its system bus is reachable from the host through /proc/PID/root.
    if let Ok(out) = std::process::Command::new("busctl")
        .args(["--address", &m.system_bus_address()])
        .args([
            "get-property",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "SystemState",
        ])
        .output()
    {
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("\"running\""),
            "busctl from the host: {out:?}"
        );
    }

    // exec: argv form, exit status and output.
    let out = m.exec(&["/bin/echo", "a b", "c"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a b c\n");
    let (code, text) = m.sh_status("echo to-out; echo to-err >&2; exit 3");
    assert_eq!(code, 3);
    assert_eq!(text, "to-out\nto-err\n");

    // A service written with put() on the running machine.
    m.put(
        "/etc/systemd/system/selftest-sleep.service",
        "[Unit]\nDescription=selftest sleeper\n\n[Service]\nExecStartPre=/bin/echo sleeper-starting\nExecStart=/bin/sleep infinity\n",
        0o644,
    );
    m.sh("systemctl daemon-reload && systemctl start selftest-sleep.service");
    assert!(is_active(&m, "selftest-sleep.service"));
    assert!(m
        .journal("selftest-sleep.service")
        .contains("sleeper-starting"));

    // A timer (OnActiveSec=1s) that fires a oneshot touching a file.
    m.put(
        "/etc/systemd/system/selftest-touch.service",
        "[Service]\nType=oneshot\nExecStart=/bin/touch /run/selftest-touched\n",
        0o644,
    );
    m.put(
        "/etc/systemd/system/selftest-touch.timer",
        "[Timer]\nOnActiveSec=1s\nAccuracySec=100ms\n",
        0o644,
    );
    m.sh("systemctl daemon-reload && systemctl start selftest-touch.timer");
    assert!(m.read("/run/selftest-touched").is_none());
    m.wait_until(Duration::from_secs(10), "the timer to fire", || {
        m.read("/run/selftest-touched").is_some()
    });

    // read() follows symlinks inside the machine (/lib -> usr/lib) and
    // reports missing files as None.
    assert!(m
        .read("/lib/systemd/system/selftest-missing.service")
        .is_none());
    assert!(m
        .read("/lib/systemd/system/systemd-journald.service")
        .expect("journald's unit is readable through /lib")
        .contains("[Service]"));
}

#[test]
fn mounts_stay_inside_and_reboot_keeps_files() {
    if !require_containers() {
        return;
    }
    let mut m = Machine::boot("selftest-reboot");

    m.sh("mkdir -p /srv/selftest-bind && echo original > /srv/selftest-bind/f");
    m.sh("mkdir -p /srv/selftest-src && echo bound > /srv/selftest-src/f");
    m.sh("mount --bind /srv/selftest-src /srv/selftest-bind");
    assert_eq!(m.sh("cat /srv/selftest-bind/f"), "bound\n");
    assert_eq!(
        m.sh("findmnt -n -o TARGET /srv/selftest-bind").trim(),
        "/srv/selftest-bind"
    );
    // Not on the host: neither the mount nor the directory.
    assert!(!host_mountpoints()
        .iter()
        .any(|p| p.contains("selftest-bind")));
    assert!(!Path::new("/srv/selftest-bind").exists());

    m.sh("echo kept > /etc/selftest-marker && touch /run/selftest-volatile");
    let first_pid = m.pid();
    m.poweroff();
    assert!(!m.is_running());
    assert!(
        !Path::new(&format!("/proc/{first_pid}")).exists(),
        "PID 1 of the machine is still alive after poweroff"
    );
    // Powered off: the disk is still readable, and put() writes into it.
    assert_eq!(m.read("/etc/selftest-marker").as_deref(), Some("kept\n"));
    m.put(
        "/lib/systemd/system/selftest-between.service",
        "[Service]\nType=oneshot\nExecStart=/bin/true\n",
        0o644,
    );

    m.boot_again();
    assert_ne!(m.pid(), first_pid);
    assert_eq!(m.sh("hostname").trim(), "selftest-reboot");
    assert_eq!(m.read("/etc/selftest-marker").as_deref(), Some("kept\n"));
    assert_eq!(m.sh("cat /etc/selftest-marker"), "kept\n");
    // The bind mount is gone: the original file shows again.
    let (code, _) = m.sh_status("mountpoint -q /srv/selftest-bind");
    assert_ne!(code, 0, "the bind mount survived the reboot");
    assert_eq!(m.sh("cat /srv/selftest-bind/f"), "original\n");
    // The unit put between boots (through the /lib -> usr/lib symlink) is
    // there and did not break /lib.
    m.sh("systemctl start selftest-between.service");
    assert!(m.sh("ls /lib/systemd/systemd").contains("systemd"));
    // /run is fresh after a reboot.
    assert!(m.read("/run/selftest-volatile").is_none());
}

#[test]
fn machines_run_side_by_side_and_clean_up() {
    if !require_containers() {
        return;
    }
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Machine::boot("selftest-par-a"));
        let b = s.spawn(|| Machine::boot("selftest-par-b"));
        (
            a.join().expect("booting machine a"),
            b.join().expect("booting machine b"),
        )
    });
    assert_eq!(a.sh("hostname").trim(), "selftest-par-a");
    assert_eq!(b.sh("hostname").trim(), "selftest-par-b");
    assert_ne!(a.pid(), b.pid());
    assert_ne!(
        a.read("/etc/machine-id"),
        b.read("/etc/machine-id"),
        "machines share a machine-id"
    );

    // Same unit name on both: each systemd manages its own cgroup tree, so
    // stopping it on one leaves the other alone.
    let unit = "[Service]\nExecStart=/bin/sleep infinity\n";
    for m in [&a, &b] {
        m.put("/etc/systemd/system/selftest-same.service", unit, 0o644);
        m.sh("systemctl daemon-reload && systemctl start selftest-same.service");
    }
    a.sh("systemctl stop selftest-same.service");
    assert!(!is_active(&a, "selftest-same.service"));
    assert!(is_active(&b, "selftest-same.service"));
    // A file written in one is not visible in the other.
    a.sh("echo only-a > /etc/selftest-only-a");
    assert!(b.read("/etc/selftest-only-a").is_none());

    // Drop powers off and removes everything on the host side.
    let pid = a.pid();
    drop(a);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    let leftovers: Vec<String> = fs::read_dir(MACHINES_DIR)
        .expect("listing the machines dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("selftest-par-a-"))
        .collect();
    assert!(
        leftovers.is_empty() || std::env::var_os("PROVISION_KEEP_MACHINES").is_some(),
        "machine dirs left behind: {leftovers:?}"
    );
    assert!(is_active(&b, "selftest-same.service"));
}

#[test]
fn files_put_before_the_first_boot_are_used_by_it() {
    if !require_containers() {
        return;
    }
    let mut m = Machine::create("selftest-fresh");
    assert!(!m.is_running());
    m.put(
        "/etc/systemd/system/selftest-at-boot.service",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c 'hostname > /run/selftest-at-boot'\n",
        0o644,
    );
    m.put(
        "/etc/systemd/system/multi-user.target.d/selftest.conf",
        "[Unit]\nWants=selftest-at-boot.service\n",
        0o644,
    );
    // put() replaces a mask (a symlink to /dev/null) instead of writing
    // through it.
    m.put(
        "/etc/systemd/system/ssh.service",
        "[Service]\nExecStart=/bin/true\n",
        0o644,
    );
    m.boot_again();
    assert_eq!(
        m.read("/run/selftest-at-boot").as_deref(),
        Some("selftest-fresh\n")
    );
    assert!(is_active(&m, "selftest-at-boot.service"));
    assert_ne!(
        m.sh_status("systemctl is-enabled ssh.service").1.trim(),
        "masked"
    );
    assert!(m
        .sh("systemctl cat ssh.service")
        .contains("ExecStart=/bin/true"));
}
