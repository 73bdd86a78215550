//! `provision bootstrap` on a fresh machine (no config) against a real git
//! daemon: the config is installed and then managed by provision itself,
//! the services deploy, their timers run, a second run changes nothing,
//! and a config change pushed to Git brings a new service up with no
//! reboot and no command.

use testkit as common;

use std::time::Duration;

use common::container::Machine;
use common::{GitDaemon, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_provision");

fn unit(name: &str) -> String {
    format!(
        "[Service]\nExecStart=/bin/sleep infinity\n\
         ExecReload=/bin/sh -c 'echo reload >> /var/log/{name}.reloads'\n"
    )
}

/// The fleet's config as kept in Git: provision manages its own config
/// file, plus one service per name.
fn fleet_config(up: &Upstream, host: &str, names: &[&str]) -> String {
    let mut c = format!(
        "[global]\nupstream = \"{}\"\ninterval = \"2s\"\n\n\
         [[services]]\nmachine = \"{host}\"\nservice = \"provision-activate\"\nname = \"provision\"\n\
         action = \"start\"\n\
         dirs = [ {{ local = \"/etc/provision/config.toml\", link = \"provision/config.toml\", file = true }} ]\n",
        up.url()
    );
    for n in names {
        c.push_str(&format!(
            "\n[[services]]\nmachine = \"{host}\"\nservice = \"{n}\"\naction = \"reload\"\n\
             dirs = [ {{ local = \"/etc/{n}\", link = \"{n}\" }} ]\n"
        ));
    }
    c
}

fn active(m: &Machine, unit: &str) -> bool {
    m.sh(&format!("systemctl is-active {unit} || true")).trim() == "active"
}

#[test]
fn bootstrap_converges_a_fresh_machine_and_follows_config_changes() {
    if !common::require_tool("git-daemon") || !common::container::require_containers() {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("fleet");
    up.commit(
        "main",
        &[
            (
                "provision/config.toml",
                Some(&fleet_config(&up, "boot1", &["web"])),
            ),
            ("web/web.conf", Some("web one\n")),
            ("api/api.conf", Some("api one\n")),
        ],
        "seed",
    );
    let m = Machine::boot("boot1");
    common::container::install_provision(&m, BIN);
    m.put("/etc/systemd/system/web.service", &unit("web"), 0o644);
    m.put("/etc/systemd/system/api.service", &unit("api"), 0o644);
    m.sh("systemctl daemon-reload && systemctl start web api");
    assert!(
        m.read("/etc/provision/config.toml").is_none(),
        "a fresh machine"
    );

    let (code, out) = m.sh_status(&format!("{BIN} bootstrap {}", up.url()));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("installed /etc/provision/config.toml"),
        "{out}"
    );
    let warnings: Vec<&str> = out.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "only the git:// warning: {out}");
    assert!(
        warnings[0].contains("unauthenticated") && warnings[0].contains("--allowed-signers"),
        "{out}"
    );
    assert_eq!(m.read("/etc/web/web.conf").as_deref(), Some("web one\n"));
    assert!(
        !m.sh("findmnt -n /etc/provision/config.toml")
            .trim()
            .is_empty(),
        "the config is provision's own mount"
    );
    for u in [
        "provision@web.timer",
        "provision@provision.timer",
        "provision-config.path",
    ] {
        assert!(active(&m, u), "{u} is active after bootstrap");
    }
    assert_eq!(m.reloads("web"), 1);

    // Again: nothing changes.
    let (code, out) = m.sh_status(&format!("{BIN} bootstrap {}", up.url()));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("is already"), "{out}");
    assert!(!out.contains("deployed"), "{out}");
    assert_eq!(m.reloads("web"), 1);

    // A hand-written config is not replaced without --force.
    let (code, out) = m.sh_status(&format!(
        "umount /etc/provision/config.toml && echo '# mine' > /etc/provision/config.toml && \
         {BIN} bootstrap {}",
        up.url()
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("--force"), "{out}");
    assert_eq!(
        m.read("/etc/provision/config.toml").as_deref(),
        Some("# mine\n")
    );
    let (code, out) = m.sh_status(&format!("{BIN} bootstrap --force {}", up.url()));
    assert_eq!(code, 0, "{out}");

    // A service added in Git: provision's own timer deploys the new config,
    // which starts the new service's timer, which deploys it.
    up.commit(
        "main",
        &[(
            "provision/config.toml",
            Some(&fleet_config(&up, "boot1", &["web", "api"])),
        )],
        "add api",
    );
    m.wait_until(Duration::from_secs(60), "api's timer is active", || {
        active(&m, "provision@api.timer")
    });
    m.wait_until(
        Duration::from_secs(60),
        "api is deployed by its timer",
        || m.read("/etc/api/api.conf").as_deref() == Some("api one\n"),
    );
}
