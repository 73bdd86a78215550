//! The Debian package, installed with `dpkg -i` in a booted machine: a pass
//! works, the man pages render, bash completes verbs and this machine's
//! service names, writing the config starts the service's timer, lintian
//! finds no error, and a purge removes the units but leaves the state; the
//! RPM installs into a scratch root with its scriptlets, rpmlint-clean.

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

/// The RPM `make rpm` built (`make test` builds it first).
fn rpm_or_fail() -> Option<PathBuf> {
    let dir = common::project_root().join("target/generate-rpm");
    let mut rpms: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rpm"))
        .collect();
    rpms.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let rpm = rpms.pop();
    if rpm.is_none() {
        assert!(
            !common::under_ci(),
            "no .rpm under target/generate-rpm: run `make rpm` (make test does)"
        );
        eprintln!("skipping: no .rpm under target/generate-rpm (run `make rpm`)");
    }
    rpm
}

/// The RPM installs into a scratch root with Fedora's paths, carries the
/// scriptlets the .deb's maintainer scripts are (presets decide what is
/// enabled), and rpmlint reports no error.
#[test]
fn the_rpm_installs_into_a_root_with_its_scriptlets_and_rpmlint_finds_no_error() {
    let Some(rpm) = rpm_or_fail() else { return };
    if !common::require_tool("rpm")
        || !common::require_tool("rpmlint")
        || !common::require_tool("rpmsign")
        || !common::require_tool("gpg")
    {
        return;
    }
    let name = rpm
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(name, format!("provision-{version}-1.x86_64.rpm"));
    let root = tempfile::tempdir().expect("a scratch root");
    let out = Command::new("rpm")
        .args(["-i", "--nodeps", "--noscripts", "--root"])
        .arg(root.path())
        .arg(&rpm)
        .output()
        .expect("rpm -i");
    assert!(out.status.success(), "{}", common::output_text(&out));
    for path in [
        "usr/bin/provision",
        "usr/lib/systemd/system/provision@.service",
        "usr/lib/systemd/system/provision@.timer",
        "usr/lib/systemd/system/provision-mount@.service",
        "usr/lib/systemd/system/provision-config.path",
        "usr/lib/systemd/system/provision-activate.service",
        "usr/lib/systemd/system-preset/80-provision.preset",
        "usr/lib/systemd/system-generators/provision-generator",
        "usr/share/man/man1/provision.1.gz",
        "usr/share/bash-completion/completions/provision",
        "usr/share/zsh/site-functions/_provision",
        "usr/share/fish/vendor_completions.d/provision.fish",
        "usr/share/doc/provision/examples/config.toml",
        "usr/share/doc/provision/examples/ci/github-actions.yml",
    ] {
        assert!(root.path().join(path).exists(), "{path} is not installed");
    }
    let out = Command::new(root.path().join("usr/bin/provision"))
        .arg("--version")
        .output()
        .expect("the installed binary");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(version),
        "{}",
        common::output_text(&out)
    );
    let unit = std::fs::read_to_string(
        root.path()
            .join("usr/lib/systemd/system/provision@.service"),
    )
    .expect("the unit");
    assert!(unit.contains("/usr/bin/provision"), "{unit}");
    let scripts = Command::new("rpm")
        .args(["-qp", "--scripts"])
        .arg(&rpm)
        .output()
        .expect("rpm -qp --scripts");
    let scripts = String::from_utf8_lossy(&scripts.stdout);
    assert!(
        scripts.contains("postinstall scriptlet")
            && scripts.contains("preset provision-config.path")
            && scripts.contains("preuninstall scriptlet")
            && scripts.contains("disable --now provision-config.path")
            && scripts.contains("postuninstall scriptlet"),
        "{scripts}"
    );
    // A release is signed by its distributor: sign a copy with a
    // throwaway key, trusted in a scratch rpm database (HOME's
    // .rpmmacros), and lint that.
    let scratch = tempfile::tempdir().expect("scratch");
    let gnupg = scratch.path().join("gnupg");
    std::fs::create_dir(&gnupg).expect("gnupg home");
    std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    let run = |cmd: &mut Command| {
        let out = cmd
            .env("GNUPGHOME", &gnupg)
            .env("HOME", scratch.path())
            .output()
            .expect("running a signing step");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            common::output_text(&out)
        );
        out
    };
    run(Command::new("gpg").args([
        "--batch",
        "--passphrase",
        "",
        "--quick-gen-key",
        "provision release <release@example.net>",
        "ed25519",
        "sign",
        "never",
    ]));
    let key = run(Command::new("gpg").args(["--export", "--armor", "release@example.net"]));
    std::fs::write(scratch.path().join("key.asc"), &key.stdout).expect("the public key");
    std::fs::write(
        scratch.path().join(".rpmmacros"),
        format!("%_dbpath {}/rpmdb\n", scratch.path().display()),
    )
    .expect(".rpmmacros");
    run(Command::new("rpm").arg("--initdb"));
    run(Command::new("rpm")
        .arg("--import")
        .arg(scratch.path().join("key.asc")));
    let signed = scratch.path().join(&name);
    std::fs::copy(&rpm, &signed).expect("copying the rpm");
    run(Command::new("rpmsign")
        .args(["--addsign", "--define", "_gpg_name release@example.net"])
        .args(["--define", "__gpg /usr/bin/gpg"])
        .args([
            "--define",
            "_gpg_sign_cmd_extra_args --pinentry-mode loopback --passphrase ''",
        ])
        .arg(&signed));
    let lint = Command::new("rpmlint")
        .arg(&signed)
        .env("HOME", scratch.path())
        .output()
        .expect("rpmlint");
    let text = common::output_text(&lint);
    assert!(
        !text.lines().any(|l| l.contains(": E: ")) && text.contains("0 errors"),
        "rpmlint errors:\n{text}"
    );
}

/// One version and one changelog: debian/changelog is what CHANGELOG.md
/// generates, and `make version VERSION=x.y.z` bumps Cargo.toml and turns
/// the Unreleased entries into x.y.z's in both changelogs.
#[test]
fn one_version_and_one_changelog_drive_both_packages() {
    if !common::require_tool("python3") {
        return;
    }
    let root = common::project_root();
    let generated = Command::new("python3")
        .current_dir(&root)
        .args(["scripts/changelog.py", "debian"])
        .output()
        .expect("changelog.py");
    assert_eq!(
        String::from_utf8_lossy(&generated.stdout),
        std::fs::read_to_string(root.join("debian/changelog")).expect("debian/changelog"),
        "debian/changelog is stale: run `python3 scripts/changelog.py debian > debian/changelog`"
    );
    let copy = tempfile::tempdir().expect("tempdir");
    for f in [
        "Makefile",
        "Cargo.toml",
        "CHANGELOG.md",
        "debian/changelog",
        "scripts/changelog.py",
    ] {
        let to = copy.path().join(f);
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("mkdir");
        std::fs::copy(root.join(f), &to).expect("copying");
    }
    let out = Command::new("make")
        .current_dir(copy.path())
        .args(["--no-print-directory", "version", "VERSION=9.9.9"])
        .output()
        .expect("make version");
    assert!(out.status.success(), "{}", common::output_text(&out));
    let read = |f: &str| std::fs::read_to_string(copy.path().join(f)).expect("reading");
    assert!(read("Cargo.toml").contains("\nversion = \"9.9.9\"\n"));
    let changelog = read("CHANGELOG.md");
    assert!(
        changelog.contains("## Unreleased\n\n## 9.9.9 ("),
        "{changelog}"
    );
    assert!(read("debian/changelog").starts_with("provision (9.9.9-1) unstable"));
    let bad = Command::new("make")
        .current_dir(copy.path())
        .args(["--no-print-directory", "version", "VERSION=nine"])
        .output()
        .expect("make version");
    assert!(!bad.status.success());
}

/// The .deb of an earlier commit (`make previous-deb`, which `make test`
/// runs; built once and kept in ~/.cache/provision-test).
fn previous_or_fail() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let dir = home.join(".cache/provision-test");
    let found = std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"));
    if found.is_none() {
        assert!(
            !common::under_ci(),
            "no earlier .deb in {}: run `make previous-deb` (make test does)",
            dir.display()
        );
        eprintln!("skipping: no earlier .deb (run `make previous-deb`)");
    }
    found
}

/// Installing the new .deb over an earlier one on a machine with deployed
/// services keeps every mount and hold, reloads and restarts no service,
/// and the next pass finds nothing to do.
#[test]
fn an_in_place_upgrade_disturbs_no_service() {
    common::need_machine!();
    let (Some(old), Some(new)) = (previous_or_fail(), deb_or_fail()) else {
        return;
    };
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    up.commit(
        "main",
        &[
            ("web/web.conf", Some("one\n")),
            ("other/o.conf", Some("o\n")),
        ],
        "seed",
    );
    let m = Machine::boot("upg1");
    m.sh(&format!("dpkg -i {}", old.display()));
    for unit in ["web", "other"] {
        m.put(
            &format!("/etc/systemd/system/{unit}.service"),
            &format!(
                "[Service]\nExecStart=/bin/sleep infinity\nExecReload=/bin/sh -c 'echo reload >> /var/log/{unit}.reloads'\n"
            ),
            0o644,
        );
    }
    m.sh("systemctl daemon-reload && systemctl start web other");
    m.put(
        "/etc/provision/config.toml",
        &format!(
            "[[services]]\nmachine = \"upg1\"\nservice = \"web\"\nupstream = \"{u}\"\naction = \"reload\"\n\
             interval = \"1h\"\ndirs = [ {{ local = \"/etc/web\", link = \"web\" }} ]\n\n\
             [[services]]\nmachine = \"upg1\"\nservice = \"other\"\nupstream = \"{u}\"\naction = \"reload\"\n\
             interval = \"1h\"\ndirs = [ {{ local = \"/etc/other\", link = \"other\" }} ]\n",
            u = up.url()
        ),
        0o644,
    );
    m.sh("provision sync");
    m.sh("provision freeze other --reason 'kept over the upgrade'");
    assert_eq!(m.read("/etc/web/web.conf").as_deref(), Some("one\n"));
    let seen = |m: &Machine| {
        m.sh(
            "for u in web other; do systemctl show -p ActiveEnterTimestampMonotonic --value $u; \
             cat /var/log/$u.reloads 2>/dev/null | wc -l; findmnt -n -o TARGET,SOURCE -M /etc/$u; done",
        )
    };
    let before = seen(&m);
    m.sh(&format!("dpkg -i {}", new.display()));
    assert!(
        m.sh("dpkg-query -W -f='${Version}' provision")
            .starts_with(env!("CARGO_PKG_VERSION")),
        "the new package is installed"
    );
    assert_eq!(seen(&m), before, "no reload, restart or remount");
    let status = m.sh("provision status --json");
    assert!(
        status.contains("\"state\": \"frozen\""),
        "the hold is kept: {status}"
    );
    let out = m.sh("provision sync");
    assert!(
        out.contains("web: up to date") && out.contains("other: frozen"),
        "{out}"
    );
    assert_eq!(
        seen(&m),
        before,
        "the first pass of the new binary changes nothing"
    );
}
