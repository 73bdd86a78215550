//! What a new user met on the first day, each as the user meets it: the
//! built binary, a real git daemon, real mounts in a private namespace.
//! Output into a closed pipe ends quietly; `diff` reports a missing mount;
//! the reports say what the service really shows (nothing deployed, held
//! behind upstream, restored from disk); a `[global]` mistake is reported
//! under `[global]`.

use testkit as common;

use common::output_report as text;

use std::process::Command;

use common::host::{app_config, seed, Host};
use common::GitDaemon;

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
    assert!(
        err.contains("1 error in config"),
        "once, not once per service: {err}"
    );
    assert!(
        err.contains(":2:9: [global]: key `depth`: must be at least 1"),
        "{err}"
    );
}

/// A TLS server (OpenSSL's `s_server`) on a free loopback port presenting
/// a self-signed certificate with `san`; returns it and its port.
fn tls_server(dir: &std::path::Path, san: &str) -> (std::process::Child, u16) {
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=provision test"])
        .args(["-addext", &format!("subjectAltName={san}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("running openssl req");
    assert!(made.status.success(), "{}", text(&made));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let server = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting openssl s_server");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "s_server did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (server, port)
}

#[test]
fn a_refused_https_certificate_is_explained() {
    if !common::require_tool("openssl") {
        return;
    }
    let cases = [
        (
            "IP:127.0.0.1",
            &["is self-signed", "update-ca-certificates", "SSL_CERT_FILE"][..],
        ),
        (
            "DNS:git.elsewhere.example",
            &[
                "issued for git.elsewhere.example, not 127.0.0.1",
                "name mismatch",
            ][..],
        ),
    ];
    for (san, needles) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut server, port) = tls_server(dir.path(), san);
        let h = Host::new();
        h.write_config(&app_config(&format!("https://127.0.0.1:{port}/r.git"), ""));
        let out = h.run(&["sync"]);
        let _ = server.kill();
        let _ = server.wait();
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{san}: {all}");
        for n in needles {
            assert!(all.contains(n), "{san}: the message says {n:?}: {all}");
        }
    }
}

#[test]
fn a_relative_state_dir_is_where_the_command_runs() {
    if !ready() {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("rel");
    seed(&up);
    let h = Host::new();
    h.write_config(&app_config(&up.url(), ""));
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(common::provision_bin())
        .arg("--config")
        .arg(h.config_path())
        .args(["--state-dir", "relative-state", "--machine", "test-host"])
        .arg("--metrics-dir")
        .arg(h.metrics_dir())
        .arg("sync")
        .current_dir(h.path())
        .output()
        .expect("running provision");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(h.path().join("relative-state/app/state.json").is_file());
    assert!(!std::path::Path::new("/relative-state").exists());
}
