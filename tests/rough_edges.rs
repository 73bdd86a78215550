//! What a new user met on the first day, each as the user meets it: the
//! built binary, a real git daemon, real mounts in a private namespace.
//! Output into a closed pipe ends quietly; `diff` reports a missing mount;
//! the reports say what the service really shows (nothing deployed, held
//! behind upstream, restored from disk); a `[global]` mistake is reported
//! under `[global]`.

mod common;

use std::process::{Command, Output};

use common::host::{app_config, seed, Host};
use common::GitDaemon;

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ready() -> bool {
    common::require_tool("git") && common::require_tool("git-daemon")
}

/// Runs `provision ARGS | head -c0` with bash; returns provision's exit
/// status and its stderr.
fn into_closed_pipe(h: &Host, args: &str) -> (String, String) {
    let out = h.script(&format!(
        "exec bash -c 'set +e; $P {args} 2>/tmp/.pipe-err-$$ | head -c0; echo rc=${{PIPESTATUS[0]}}; cat /tmp/.pipe-err-$$ >&2; rm -f /tmp/.pipe-err-$$'"
    ));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    if !ready() {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("pipe");
    seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), ""));
    for args in ["check", "sync", "status", "history app"] {
        let (out, err) = into_closed_pipe(&h, args);
        assert!(out.contains("rc=0"), "{args}: {out}\n{err}");
        assert!(
            !err.contains("Broken pipe") && !err.contains("panicked"),
            "{args}: {err}"
        );
    }
    // The pass whose output nobody read still did its work.
    assert!(h.state_json("app")["deployed"]["commit"].is_string());
}

#[test]
fn diff_reports_a_mount_that_is_missing() {
    if !ready() {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("diff");
    let head = seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), ""));
    h.sync(0);
    // Each plain run starts in a namespace without the mounts, as after an
    // `umount` by hand: the service would read the directory underneath.
    let out = h.run(&["diff", "app"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let local = h.root().join("etc/app");
    assert!(
        all.contains(&format!(
            "mount {}: not mounted: the service sees the directory underneath, not the files of {}",
            local.display(),
            &head[..10]
        )),
        "{all}"
    );
    // With the mounts in place there is no difference.
    let out = h.run_mounted(&["diff", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
}

#[test]
fn reports_say_what_the_service_shows() {
    if !ready() {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("words");

    // Nothing was ever deployed: "last good release kept" would be false.
    let h = Host::new();
    h.write_config(&app_config("git://127.0.0.1:1/gone.git", ""));
    let out = h.run(&["sync"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("app: pass failed, nothing is deployed: "),
        "{all}"
    );
    assert!(!all.contains("last good release kept"), "{all}");

    // Pinned behind upstream: not "up to date".
    let first = seed(&up);
    let second = up.commit("main", &[("app/etc/app.conf", Some("port = 2\n"))], "two");
    let h = Host::new();
    h.write_config(&app_config(&up.url(), ""));
    h.sync(0);
    let out = h.run(&["rollback", "app", &first]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = h.sync(0);
    assert!(
        out.contains(&format!(
            "app: pinned at {} (upstream at {})",
            &first[..10],
            &second[..10]
        )),
        "{out}"
    );
    assert!(!out.contains("up to date"), "{out}");

    // The boot-time restore made no network check: it says so.
    let out = h.run(&["mount"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains(&format!(
            "app: restored {} from disk (upstream not checked)",
            &first[..10]
        )),
        "{all}"
    );
}

#[test]
fn a_global_mistake_is_reported_under_global() {
    let h = Host::new();
    h.write_config(&format!(
        "[global]\ndepth = 0\n{}{}",
        app_config("git://127.0.0.1/r.git", ""),
        app_config("git://127.0.0.1/r.git", "name = \"second\"")
            .replace("/etc/app", "/etc/second")
            .replace("/etc/default/app", "/etc/default/second")
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_provision"))
        .arg("--config")
        .arg(h.config_path())
        .arg("check")
        .output()
        .expect("running check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(err.contains("1 error in config"), "once, not once per service: {err}");
    assert!(
        err.contains(":2:9: [global]: key `depth`: must be at least 1"),
        "{err}"
    );
}
