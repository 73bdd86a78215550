//! The Debian package, installed with `dpkg -i` in a booted machine: a pass
//! works, the man pages render, bash completes verbs and this machine's
//! service names, writing the config starts the service's timer, lintian
//! finds no error, and a purge removes the units but leaves the state.

use testkit as common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::container::Machine;
use common::GitDaemon;

/// The package `make deb` built (`make test` builds it first).
fn package() -> Option<PathBuf> {
    let dir = common::project_root().join("target/debian");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    debs.pop()
}

fn deb_or_fail() -> Option<PathBuf> {
    let deb = package();
    if deb.is_none() {
        assert!(
            !common::under_ci(),
            "no .deb under target/debian: run `make deb` (make test does)"
        );
        eprintln!("skipping: no .deb under target/debian (run `make deb`)");
    }
    deb
}

#[test]
fn lintian_finds_no_error() {
    let Some(deb) = deb_or_fail() else { return };
    if !common::require_tool("lintian") {
        return;
    }
    let out = Command::new("lintian")
        .arg(&deb)
        .output()
        .expect("running lintian");
    let text = common::output_text(&out);
    assert!(
        !text.lines().any(|l| l.starts_with("E:")),
        "lintian errors:\n{text}"
    );
}

#[test]
fn the_installed_package_runs_documents_completes_and_purges_cleanly() {
    common::need_machine!();
    let Some(deb) = deb_or_fail() else { return };
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    up.commit(
        "main",
        &[("web/web.conf", Some("from the package\n"))],
        "seed",
    );
    let m = Machine::boot("pkg1");
    m.sh(&format!("dpkg -i {}", deb.display()));
    assert_eq!(m.sh("command -v provision").trim(), "/usr/bin/provision");
    assert_eq!(
        m.sh("systemctl is-active provision-config.path").trim(),
        "active",
        "the postinst starts the config watch"
    );
    assert_eq!(m.sh("test -d /etc/provision && echo yes").trim(), "yes");
    assert_eq!(
        m.sh("systemctl show -p TimeoutStartUSec --value provision@web.service")
            .trim(),
        "15min",
        "a pass has a start timeout backing up its own bounds"
    );

    let man = m.sh("MANWIDTH=80 man -P cat provision-sync 2>/dev/null");
    assert!(
        man.contains("provision-sync - Run one reconcile pass now"),
        "{man}"
    );
    let man = m.sh("MANWIDTH=80 man -P cat provision 2>/dev/null");
    assert!(man.contains("rollback"), "{man}");

    m.put(
        "/etc/systemd/system/web.service",
        "[Service]\nExecStart=/bin/sleep infinity\nExecReload=/bin/true\n",
        0o644,
    );
    m.sh("systemctl daemon-reload && systemctl start web");
    m.put(
        "/etc/provision/config.toml",
        &format!(
            "[[services]]\nmachine = \"pkg1\"\nservice = \"web\"\nupstream = \"{}\"\naction = \"reload\"\n\
             interval = \"2s\"\ndirs = [ {{ local = \"/etc/web\", link = \"web\" }} ]\n",
            up.url()
        ),
        0o644,
    );
    m.wait_until(
        Duration::from_secs(30),
        "the timer of web runs a pass",
        || m.read("/etc/web/web.conf").as_deref() == Some("from the package\n"),
    );
    let out = m.sh("provision sync web");
    assert!(out.contains("web: up to date"), "{out}");

    // bash completion, as an interactive shell would ask for it.
    let complete = |words: &str, current: usize| {
        m.sh(&format!(
            "bash -c 'source /usr/share/bash-completion/completions/provision; \
             COMP_WORDS=({words}); COMP_CWORD={current}; COMP_TYPE=9; \
             _clap_complete_provision provision \"${{COMP_WORDS[{current}]}}\"; \
             printf \"%s\\n\" \"${{COMPREPLY[@]}}\"'"
        ))
    };
    let verbs = complete("provision sy", 1);
    assert!(verbs.lines().any(|l| l.trim() == "sync"), "{verbs}");
    let names = complete("provision rollback \"\"", 2);
    assert!(names.lines().any(|l| l.trim() == "web"), "{names}");

    m.sh("dpkg --purge provision");
    assert!(m
        .read("/usr/lib/systemd/system/provision@.service")
        .is_none());
    assert!(m.sh("command -v provision || true").trim().is_empty());
    assert!(
        m.read("/var/lib/provision/web/state.json").is_some(),
        "purge leaves the state"
    );
}
