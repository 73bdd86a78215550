//! ssh upstreams through the system's OpenSSH client, against real sshd
//! servers on loopback: protocol v2 where sshd accepts `GIT_PROTOCOL`
//! (the mirror then holds only the mounted files' blobs), v0 on the same
//! connection where it does not (still deployed and updated, and named
//! once with what makes polls cheap), a host certificate, a `ProxyJump`
//! bastion from the operator's ssh_config through `ssh_command`, and an
//! unknown host key named with what to do.

use testkit as common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::host::{app_config, seed, Host};
use common::sshd::Sshd;
use common::{GitDaemon, Upstream};

/// Lets the server leave blobs out (`filter blob:none`), as forges do.
fn allow_filter(up: &Upstream) {
    common::run(common::git_cmd(up.bare()).args(["config", "uploadpack.allowFilter", "true"]));
}

fn blob_id(up: &Upstream, path: &str) -> String {
    common::run(common::git_cmd(up.bare()).args(["rev-parse", &format!("main:{path}")]))
}

/// Whether the mirror under `state` holds object `id`.
fn holds(state: &Path, id: &str) -> bool {
    mirror(state).is_some_and(|m| {
        Command::new("git")
            .arg("--git-dir")
            .arg(&m)
            .args(["cat-file", "-e", id])
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn mirror(state: &Path) -> Option<PathBuf> {
    fs::read_dir(state.join(".mirrors"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "git"))
}

#[test]
fn an_sshd_accepting_git_protocol_is_spoken_to_in_v2_and_a_stock_one_in_v0() {
    common::need_git!();
    let Some(v2) = Sshd::start_with("AcceptEnv GIT_PROTOCOL\n", |_| {}) else {
        return;
    };
    let Some(v0) = Sshd::start() else { return };
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    allow_filter(&up);
    let secret = blob_id(&up, "other/secret.conf");
    for (sshd, speaks_v2) in [(&v2, true), (&v0, false)] {
        let h = Host::new();
        let extra = format!(
            "ssh_key = \"{}\"\nssh_known_hosts = \"{}\"",
            sshd.path("client_key").display(),
            sshd.known_hosts().display()
        );
        h.write_config(&app_config(&sshd.url(up.bare()), &extra));
        let out = h.sync(0);
        assert!(out.contains("app: deployed"), "{out}");
        let mirror = mirror(&h.state()).expect("a mirror");
        assert_eq!(
            !holds(&h.state(), &secret),
            speaks_v2,
            "v2 leaves out the blobs no service mounts; v0 cannot:\n{out}"
        );
        assert_eq!(
            mirror.join("provision-ssh-v0").exists(),
            !speaks_v2,
            "a v0 server is remembered"
        );
        assert_eq!(
            out.contains("answers over ssh in git's protocol v0")
                && out.contains("AcceptEnv GIT_PROTOCOL"),
            !speaks_v2,
            "a v0 server is named, with what makes polls cheap:\n{out}"
        );
        let again = h.sync(0);
        assert!(again.contains("app: up to date"), "{again}");
        assert!(!again.contains("protocol v0"), "said once:\n{again}");
        let next = up.commit(
            "main",
            &[("app/etc/app.conf", Some("port = 2\n"))],
            "port 2",
        );
        let moved = h.sync(0);
        assert!(moved.contains("app: deployed"), "{moved}");
        assert_eq!(
            h.status_json()["deployed"]["commit"],
            next.as_str(),
            "{moved}"
        );
        assert_eq!(
            common::host::read(&h.deployed("app").join("app/etc/app.conf")),
            "port = 2\n",
            "{moved}"
        );
    }
}

/// A host certificate (`@cert-authority` in known_hosts), which libssh2
/// cannot check, and an unknown host key named with what to do.
#[test]
fn a_host_certificate_is_trusted_and_an_unknown_host_key_is_named() {
    common::need_git!();
    let Some(sshd) = Sshd::start_with(
        "AcceptEnv GIT_PROTOCOL\nHostCertificate __DIR__/host_key-cert.pub\n",
        |dir| {
            common::run(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(dir.join("ca")),
            );
            common::run(
                Command::new("ssh-keygen")
                    .args(["-q", "-s"])
                    .arg(dir.join("ca"))
                    .args(["-I", "test-host", "-h", "-n", "127.0.0.1"])
                    .arg(dir.join("host_key.pub")),
            );
        },
    ) else {
        return;
    };
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    let ca = fs::read_to_string(sshd.path("ca.pub")).expect("the CA's key");
    let trusted = sshd.path("known_hosts_ca");
    fs::write(
        &trusted,
        format!("@cert-authority [127.0.0.1]:{} {ca}", sshd.port),
    )
    .expect("writing known_hosts");
    let h = Host::new();
    let extra = |kh: &Path| {
        format!(
            "ssh_key = \"{}\"\nssh_known_hosts = \"{}\"",
            sshd.path("client_key").display(),
            kh.display()
        )
    };
    h.write_config(&app_config(&sshd.url(up.bare()), &extra(&trusted)));
    let out = h.sync(0);
    assert!(out.contains("app: deployed"), "{out}\n{}", sshd.log());

    let empty = sshd.path("known_hosts_empty");
    fs::write(&empty, "").expect("writing known_hosts");
    let h = Host::new();
    h.write_config(&app_config(&sshd.url(up.bare()), &extra(&empty)));
    let out = h.sync(1);
    assert!(
        out.contains(&format!(
            "the ssh host key of [127.0.0.1]:{} is not in {}",
            sshd.port,
            empty.display()
        )) && out.contains("ssh-keyscan"),
        "{out}"
    );
}

/// The operator's ssh_config (here through `ssh_command = "ssh -F FILE"`)
/// applies: a `Host` alias reached through a `ProxyJump` bastion.
#[test]
fn a_proxyjump_bastion_from_the_operators_ssh_config_is_used() {
    common::need_git!();
    let Some(target) = Sshd::start_with("AcceptEnv GIT_PROTOCOL\n", |_| {}) else {
        return;
    };
    let Some(bastion) = Sshd::start() else { return };
    let d = GitDaemon::start();
    let up = d.repo("r");
    let head = seed(&up);
    let known = target.path("known_hosts_both");
    let line = |s: &Sshd| {
        let key = fs::read_to_string(s.path("host_key.pub")).expect("a host key");
        let key: Vec<&str> = key.split_whitespace().take(2).collect();
        format!("[127.0.0.1]:{} {}\n", s.port, key.join(" "))
    };
    fs::write(&known, line(&target) + &line(&bastion)).expect("writing known_hosts");
    let config = target.path("ssh_config");
    fs::write(
        &config,
        format!(
            "Host config-repo\n  HostName 127.0.0.1\n  Port {}\n  User root\n  ProxyJump root@127.0.0.1:{}\n  \
             IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n\
             Host 127.0.0.1\n  IdentityFile {}\n  UserKnownHostsFile {}\n",
            target.port,
            bastion.port,
            target.path("client_key").display(),
            known.display(),
            bastion.path("client_key").display(),
            known.display(),
        ),
    )
    .expect("writing ssh_config");
    let h = Host::new();
    let url = format!("config-repo:{}", up.bare().display());
    let extra = format!("ssh_command = \"ssh -F {}\"", config.display());
    h.write_config(&app_config(&url, &extra));
    let out = h.sync(0);
    assert!(
        out.contains(&format!("app: deployed {}", &head[..10])),
        "{out}\nbastion:\n{}",
        bastion.log()
    );
    assert!(
        bastion.log().contains("Accepted publickey"),
        "the connection went through the bastion:\n{}",
        bastion.log()
    );
}

/// An operator's ControlMaster (kept ten minutes) carries the next polls
/// over its one connection: one login for two passes, each of which ends
/// without waiting for the master it leaves behind.
#[test]
fn a_kept_controlmaster_carries_the_next_poll() {
    common::need_git!();
    let Some(sshd) = Sshd::start_with("AcceptEnv GIT_PROTOCOL\n", |_| {}) else {
        return;
    };
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    let mux = sshd.path("mux");
    fs::create_dir_all(&mux).expect("a directory for the mux socket");
    let h = Host::new();
    let extra = format!(
        "ssh_key = \"{}\"\nssh_known_hosts = \"{}\"\nssh_command = \"ssh -o ControlMaster=auto -o ControlPath={}/%C -o ControlPersist=600 -o SendEnv=GIT_PROTOCOL\"",
        sshd.path("client_key").display(),
        sshd.known_hosts().display(),
        mux.display()
    );
    h.write_config(&app_config(&sshd.url(up.bare()), &extra));
    // `timeout` only bounds a pass that would wait for the master.
    let sync = || {
        let mut c = h.command(&["sync"]);
        let mut t = Command::new("timeout");
        t.arg("120").arg(c.get_program()).args(c.get_args());
        t.envs(c.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))));
        let _ = &mut c;
        t.output().expect("running provision")
    };
    let first = sync();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        common::output_text(&first)
    );
    let logins = || sshd.log().matches("Accepted publickey").count();
    assert_eq!(logins(), 1, "{}", sshd.log());
    let second = sync();
    assert_eq!(
        second.status.code(),
        Some(0),
        "{}",
        common::output_text(&second)
    );
    assert!(
        common::output_text(&second).contains("app: up to date"),
        "{}",
        common::output_text(&second)
    );
    assert_eq!(
        logins(),
        1,
        "the second poll went over the master's connection:\n{}",
        sshd.log()
    );
    let _ = Command::new("ssh")
        .args([
            "-o",
            &format!("ControlPath={}/%C", mux.display()),
            "-O",
            "exit",
            "-p",
        ])
        .arg(sshd.port.to_string())
        .arg("root@127.0.0.1")
        .output();
}
