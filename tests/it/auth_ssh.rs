//! Host keys and client keys of ssh upstreams, as `provision sync` meets
//! them through OpenSSH against a real sshd on 127.0.0.1 (a stock one, so
//! spoken to in protocol v0): a hashed known_hosts entry is trusted, a
//! changed host key and a refused, missing or passphrase-protected client
//! key end the pass with what to fix and deploy nothing, and a server that
//! never answers is given up on at `timeout`.

use testkit as common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::host::{app_config, seed, Host};
use common::sshd::Sshd;
use common::GitDaemon;

/// The config lines for `key` and `known_hosts`.
fn keys(key: &Path, known_hosts: &Path) -> String {
    format!(
        "ssh_key = \"{}\"\nssh_known_hosts = \"{}\"",
        key.display(),
        known_hosts.display()
    )
}

/// A host configured for `url` with `extra`, whose first sync fails with
/// exit code 1; returns what it said, after checking nothing is deployed.
fn fails(url: &str, extra: &str) -> String {
    let h = Host::new();
    h.write_config(&app_config(url, extra));
    let out = h.sync(1);
    assert!(
        out.contains("app: pass failed, nothing is deployed"),
        "{out}"
    );
    assert!(
        h.status_json()["deployed"].is_null(),
        "nothing is deployed:\n{out}"
    );
    out
}

#[test]
fn a_hashed_known_hosts_entry_is_trusted() {
    common::need_git!();
    let Some(sshd) = Sshd::start() else { return };
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    let known_hosts = sshd.known_hosts();
    common::run(
        Command::new("ssh-keygen")
            .arg("-H")
            .arg("-f")
            .arg(&known_hosts),
    );
    let hashed = fs::read_to_string(&known_hosts).expect("reading known_hosts");
    assert!(hashed.starts_with("|1|"), "ssh-keygen -H wrote {hashed}");
    let h = Host::new();
    let extra = keys(&sshd.path("client_key"), &known_hosts);
    h.write_config(&app_config(&sshd.url(up.bare()), &extra));
    let out = h.sync(0);
    assert!(out.contains("app: deployed"), "{out}\n{}", sshd.log());
}

#[test]
fn a_changed_host_key_is_refused() {
    common::need_git!();
    let Some(sshd) = Sshd::start() else { return };
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    let other = common::public_key(&sshd.path("other_key.pub"));
    let known_hosts = sshd.path("known_hosts_other");
    fs::write(&known_hosts, format!("[127.0.0.1]:{} {other}\n", sshd.port))
        .expect("writing known_hosts");
    let out = fails(
        &sshd.url(up.bare()),
        &keys(&sshd.path("client_key"), &known_hosts),
    );
    assert!(
        out.contains("CHANGED") && out.contains(&known_hosts.display().to_string()),
        "{out}"
    );
}

#[test]
fn a_refused_client_key_is_named() {
    common::need_git!();
    let Some(sshd) = Sshd::start() else { return };
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    // `other_key` is a valid key that the server does not accept.
    let key = sshd.path("other_key");
    let out = fails(&sshd.url(up.bare()), &keys(&key, &sshd.known_hosts()));
    assert!(
        out.contains(&format!(
            "ssh authentication was rejected for {} with key {}",
            sshd.url(up.bare()),
            key.display()
        )),
        "{out}"
    );
}

#[test]
fn a_missing_or_passphrase_protected_key_is_named_before_connecting() {
    common::need_git!();
    let Some(sshd) = Sshd::start() else { return };
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    let missing = sshd.path("missing_key");
    let out = fails(&sshd.url(up.bare()), &keys(&missing, &sshd.known_hosts()));
    assert!(
        out.contains(&format!("reading ssh key {}", missing.display())),
        "{out}"
    );
    let locked = sshd.path("locked_key");
    common::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "a passphrase", "-f"])
            .arg(&locked),
    );
    sshd.authorize("locked_key");
    let out = fails(&sshd.url(up.bare()), &keys(&locked, &sshd.known_hosts()));
    assert!(
        out.contains(&format!(
            "ssh key {} is encrypted with a passphrase",
            locked.display()
        )),
        "{out}"
    );
    assert!(
        !sshd.log().contains("Accepted publickey"),
        "no login was made:\n{}",
        sshd.log()
    );
}

/// A connection that opens but where no ssh server ever speaks (here a
/// `ProxyCommand` that only sleeps) is given up on at `timeout`.
#[test]
fn a_server_that_never_answers_is_given_up_on_at_the_timeout() {
    common::need_git!();
    let Some(sshd) = Sshd::start() else { return };
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    let extra = format!(
        "{}\ntimeout = 2\nssh_command = \"ssh -o ProxyCommand='sleep 60'\"",
        keys(&sshd.path("client_key"), &sshd.known_hosts())
    );
    let started = Instant::now();
    let out = fails(&sshd.url(up.bare()), &extra);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the pass ended within its timeout and the lock wait: {:?}\n{out}",
        started.elapsed()
    );
    assert!(
        out.contains("the server did not answer within 2 s (the service's `timeout`)"),
        "{out}"
    );
}
