//! The operator's `validate` command and holds with an end, on a scratch
//! host (no systemd needed: these services have no action): what a command
//! that hangs or floods costs, what a bad key says, and a freeze that ends
//! by itself.

use testkit as common;

use std::time::{Duration, Instant};

use common::host::{app_config, seed, Host};
use common::GitDaemon;

#[test]
fn a_validate_command_that_hangs_is_killed_with_its_children_at_the_timeout() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("app");
    seed(&up);
    let h = Host::new();
    let marker = format!("sleep 60{}", std::process::id() % 10);
    h.write_config(&app_config(
        &up.url(),
        &format!("validate = \"{marker} & {marker}1\"\nvalidate_timeout = \"2s\""),
    ));
    let start = Instant::now();
    let out = h.sync(1);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    assert!(out.contains("at validate"), "{out}");
    assert!(out.contains("timed out after 2s (killed)"), "{out}");
    assert!(out.contains("nothing switched"), "{out}");
    let left = std::process::Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .expect("pgrep");
    assert!(
        !left.status.success(),
        "the command's process group is gone: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    let s = h.status_json();
    assert_eq!(s["rejected"]["stage"], "validate");
    assert!(s["deployed"].is_null(), "nothing was deployed: {s}");
}

#[test]
fn megabytes_of_validate_output_are_capped_in_messages_and_state() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("app");
    seed(&up);
    let h = Host::new();
    h.write_config(&app_config(
        &up.url(),
        "validate = \"head -c 3000000 /dev/zero | tr '\\\\0' y; echo; echo the real error >&2; exit 1\"",
    ));
    let out = h.sync(1);
    assert!(out.contains("the real error"), "{out}");
    assert!(out.contains("of output in all"), "{out}");
    assert!(out.len() < 20_000, "{} bytes of output", out.len());
    let state = std::fs::metadata(h.state().join("app/state.json")).expect("state file");
    assert!(state.len() < 20_000, "state file is {} bytes", state.len());
    assert_eq!(h.state_json("app")["rejected"]["stage"], "validate");
}

#[test]
fn validate_sees_the_candidate_at_the_service_paths_and_gets_its_environment() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("app");
    let first = seed(&up);
    let h = Host::new();
    let local = h.root().join("etc/app");
    let log = h.path().join("validate.log");
    // Reads the files where the service reads them, read-only.
    let check = format!(
        "cat {l}/app.conf >> {log}; env | grep ^PROVISION_ | sort >> {log}; \
         if touch {l}/x 2>/dev/null; then echo writable >> {log}; fi; grep -q 'port = ' {l}/app.conf",
        l = local.display(),
        log = log.display()
    );
    h.write_config(&app_config(&up.url(), &format!("validate = {check:?}")));
    h.sync(0);
    let seen = std::fs::read_to_string(&log).expect("validate ran");
    assert!(seen.starts_with("port = 1\n"), "{seen}");
    assert!(seen.contains("PROVISION_SERVICE=app\n"), "{seen}");
    assert!(
        seen.contains(&format!("PROVISION_COMMIT={first}\n")),
        "{seen}"
    );
    assert!(seen.contains("PROVISION_PREVIOUS=\n"), "{seen}");
    assert!(!seen.contains("writable"), "{seen}");

    let second = up.commit("main", &[("app/etc/app.conf", Some("port = 2\n"))], "two");
    h.run_mounted(&["sync"]);
    let seen = std::fs::read_to_string(&log).expect("validate ran");
    assert!(
        seen.contains("port = 2\n"),
        "the candidate, not the deployed files: {seen}"
    );
    assert!(
        seen.contains(&format!("PROVISION_COMMIT={second}\n")),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("PROVISION_PREVIOUS={first}\n")),
        "{seen}"
    );

    // A commit it refuses never shows, and the next one is tried normally.
    let bad = up.commit("main", &[("app/etc/app.conf", Some("oops\n"))], "bad");
    let out = h.run_mounted(&["sync"]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("rejected {} at validate", &bad[..10])),
        "{text}"
    );
    assert_eq!(h.state_json("app")["deployed"]["commit"], second.as_str());
    up.commit("main", &[("app/etc/app.conf", Some("port = 3\n"))], "three");
    let out = h.run_mounted(&["sync"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    assert!(h.state_json("app")["rejected"].is_null());
}

#[test]
fn an_empty_check_command_is_a_config_error() {
    let h = Host::new();
    for key in ["validate", "health"] {
        h.write_config(&app_config(
            "https://git.example.net/r",
            &format!("{key} = \" \""),
        ));
        let out = h.run(&["check"]);
        let text = common::output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(
            text.contains(&format!("key `{key}`: must not be empty")),
            "{text}"
        );
    }
    h.write_config(&app_config(
        "https://git.example.net/r",
        "validate = \"true\"\nvalidate_timeout = \"soon\"",
    ));
    let text = common::output_text(&h.run(&["check"]));
    assert!(text.contains("key `validate_timeout`"), "{text}");
}

#[test]
fn a_freeze_with_an_end_expires_by_itself_and_shows_who_set_it() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("app");
    seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), ""));
    h.sync(0);
    let out = h.run(&[
        "freeze", "app", "--until", "3s", "--by", "alice", "--reason", "demo",
    ]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("frozen at") && text.contains("until"),
        "{text}"
    );
    let s = h.status_json();
    assert_eq!(s["state"], "frozen");
    assert_eq!(s["hold"]["by"], "alice");
    let until = s["hold"]["until"].as_u64().expect("hold.until");
    let table = common::output_text(&h.run(&["status"]));
    assert!(table.contains("by alice, until"), "{table}");
    assert!(
        h.metrics_text().contains(&format!(
            "provision_frozen_until_timestamp_seconds{{service=\"app\"}} {until}"
        )),
        "{}",
        h.metrics_text()
    );

    let next = up.commit("main", &[("app/etc/app.conf", Some("port = 9\n"))], "nine");
    let out = h.run_mounted(&["sync"]);
    assert!(common::output_text(&out).contains("frozen"), "still frozen");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(h.status_json()["state"], "following");
    let out = h.run_mounted(&["sync"]);
    let text = common::output_text(&out);
    assert!(text.contains("ended at"), "{text}");
    assert!(
        text.contains(&format!("deployed {}", &next[..10])),
        "{text}"
    );

    for bad in ["yesterday", "2001-01-01T00:00:00Z"] {
        let out = h.run(&["freeze", "app", "--until", bad]);
        assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    }
}

/// A server that alternates the head between a rejected commit and another
/// one cannot make the rejected commit be checked (and, with an action,
/// deployed and reverted) again: it stays rejected until `forward`.
#[test]
fn a_rejected_commit_stays_rejected_while_the_server_alternates_heads() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("app");
    let good = seed(&up);
    let bad = up.commit("main", &[("app/etc/app.conf", Some("port = bad\n"))], "bad");
    let h = Host::new();
    let runs = h.path().join("validate.runs");
    h.write_config(&app_config(
        &up.url(),
        &format!(
            "validate = \"echo $PROVISION_COMMIT >> {}; test $PROVISION_COMMIT != {bad}\"",
            runs.display()
        ),
    ));
    let serve = |commit: &str| {
        common::run(common::git_cmd(up.bare()).args(["update-ref", "refs/heads/main", commit]));
    };
    let checked = || {
        std::fs::read_to_string(&runs)
            .unwrap_or_default()
            .matches(bad.as_str())
            .count()
    };
    serve(&good);
    h.sync(0);
    serve(&bad);
    let out = h.sync(1);
    assert!(out.contains("at validate"), "{out}");
    for _ in 0..3 {
        serve(&good);
        h.sync(0);
        assert!(h.status_json()["rejected"].is_null());
        serve(&bad);
        let out = h.sync(0);
        assert!(out.contains("was rejected at validate"), "{out}");
        assert_eq!(h.status_json()["rejected"]["commit"], bad.as_str());
    }
    assert_eq!(checked(), 1, "the rejected commit was checked again");
    let out = h.run(&["forward", "app"]);
    assert_eq!(out.status.code(), Some(1), "{}", common::output_text(&out));
    assert_eq!(checked(), 2, "forward tries it again");
}

/// `validate` and `health` get the search path, locale, time zone and
/// provision's own variables, not the rest of provision's environment
/// (where a unit keeps its tokens).
#[test]
fn checks_never_see_the_secrets_in_provisions_environment() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("app");
    seed(&up);
    let h = Host::new();
    let log = h.path().join("env.log");
    h.write_config(&app_config(
        &up.url(),
        &format!("validate = \"env > {}\"", log.display()),
    ));
    let out = h
        .command(&["sync"])
        .env("GITHUB_TOKEN", "ghp_not_for_checks")
        .env("AWS_SECRET_ACCESS_KEY", "not-for-checks-either")
        .env("LC_TIME", "C.UTF-8")
        .env("TZ", "UTC")
        .env("PROVISION_HTTPS_USER", "deploy")
        .output()
        .expect("running provision");
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let seen = std::fs::read_to_string(&log).expect("validate ran");
    assert!(!seen.contains("not_for_checks"), "{seen}");
    assert!(!seen.contains("not-for-checks"), "{seen}");
    for kept in [
        "PATH=/",
        "LC_TIME=C.UTF-8",
        "TZ=UTC",
        "PROVISION_HTTPS_USER=deploy",
        "PROVISION_SERVICE=app",
    ] {
        assert!(seen.lines().any(|l| l.starts_with(kept)), "{kept}: {seen}");
    }
}

/// `check_user` runs `validate` as that user, with its groups, reading the
/// candidate where the service will; a user the machine does not have
/// fails the pass and keeps what is deployed, without rejecting the commit.
#[test]
fn validate_runs_as_check_user_and_a_missing_one_fails_the_pass() {
    common::need_git!();
    use std::os::unix::fs::PermissionsExt;
    let d = GitDaemon::start();
    let up = d.repo("app");
    let first = seed(&up);
    let h = Host::new();
    let open = |p: &std::path::Path, mode| {
        std::fs::create_dir_all(p).expect("mkdir");
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    // The check user must reach the service's paths, as on a real host.
    open(h.path(), 0o755);
    open(&h.root(), 0o755);
    let logs = h.path().join("logs");
    open(&logs, 0o1777);
    let log = logs.join("validate.log");
    let check = format!(
        "id -un > {log}; id -G >> {log}; grep 'port = ' {l}/app.conf >> {log}",
        l = h.root().join("etc/app").display(),
        log = log.display()
    );
    let config = |user: &str| {
        app_config(
            &up.url(),
            &format!("check_user = {user:?}\nvalidate = {check:?}"),
        )
    };
    h.write_config(&config("nobody"));
    h.sync(0);
    let seen = std::fs::read_to_string(&log).expect("validate ran");
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines.first(), Some(&"nobody"), "{seen}");
    let gid = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .map(|u| u.gid.as_raw().to_string())
        .expect("nobody's group");
    assert_eq!(lines.get(1), Some(&gid.as_str()), "no root groups: {seen}");
    assert_eq!(lines.get(2), Some(&"port = 1"), "{seen}");

    h.write_config(&config("no-such-user"));
    up.commit("main", &[("app/etc/app.conf", Some("port = 2\n"))], "two");
    let out = h.run_mounted(&["sync"]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("check_user"), "{text}");
    assert!(text.contains("\"no-such-user\" does not exist"), "{text}");
    let state = h.state_json("app");
    assert_eq!(state["deployed"]["commit"], first.as_str());
    assert!(
        state["rejected"].is_null(),
        "not the commit's fault: {state}"
    );
}
