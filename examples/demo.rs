//! `make demo`: a real systemd machine (PID 1 in a namespace container), a
//! real git daemon on loopback, and provision provisioning a service on it
//! step by step: first deployment, an update, a no-op pass, local drift, a
//! commit its checker rejects and the fix, a secret encrypted for the
//! machine's host key, a reboot without network.

use testkit as common;

use std::path::Path;
use std::time::Instant;

use common::container::Machine;
use common::GitDaemon;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo/repo");

/// Where the demo machine's provision writes its metrics.
const METRICS: &str = "/var/lib/prometheus/node-exporter/provision.prom";

fn step(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

/// Runs a shell command inside the machine, echoing it, its output and a
/// non-zero exit code.
fn show(m: &Machine, cmd: &str) {
    println!("{}# {cmd}", m.hostname());
    let (code, out) = m.sh_status(cmd);
    for line in out.lines() {
        println!("  {line}");
    }
    if code != 0 {
        println!("  (exit {code})");
    }
}

/// `plaintext` encrypted by the reference `age` CLI for the ssh public key
/// `recipient`, ASCII-armored.
fn age_encrypt(recipient: &str, plaintext: &str) -> String {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("recipient.pub");
    std::fs::write(&key, recipient).expect("writing the recipient");
    let mut child = std::process::Command::new("age")
        .args(["-a", "-R"])
        .arg(&key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running age (Debian package age; `make deps` installs it)");
    child
        .stdin
        .take()
        .expect("age's stdin")
        .write_all(plaintext.as_bytes())
        .expect("writing to age");
    let out = child.wait_with_output().expect("waiting for age");
    assert!(out.status.success(), "age failed");
    String::from_utf8(out.stdout).expect("armored output")
}

fn main() {
    let start = Instant::now();
    let bin = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/provision").into());
    assert!(
        Path::new(&bin).exists(),
        "build provision first: {bin} is missing"
    );
    if !common::require_tool("git-daemon") || !common::container::require_containers() {
        std::process::exit(1);
    }

    step("a configuration repository, served by git daemon on 127.0.0.1");
    let mut daemon = GitDaemon::start();
    let up = daemon.repo("config");
    let conf =
        std::fs::read_to_string(format!("{REPO}/web/etc/web.conf")).expect("reading demo files");
    let default =
        std::fs::read_to_string(format!("{REPO}/web/default/web")).expect("reading demo files");
    up.commit(
        "main",
        &[
            ("web/etc/web.conf", Some(&conf)),
            ("web/default/web", Some(&default)),
        ],
        "web: initial configuration",
    );
    println!("{}", up.url());

    step("a machine: systemd booted as PID 1 in a container");
    let mut m = Machine::boot("demo-host");
    common::container::install_provision(&m, &bin);
    m.put(
        "/etc/systemd/system/web.service",
        "[Unit]\nDescription=demo web service\n[Service]\nExecStart=/bin/sleep infinity\nExecReload=/bin/sh -c 'echo \"$(date +%%T) reloaded\" >> /var/log/web.reloads'\n[Install]\nWantedBy=multi-user.target\n",
        0o644,
    );
    let config = format!(
        "[global]\nmetrics_dir = \"/var/lib/prometheus/node-exporter\"\n\n[[services]]\nmachine = \"demo-host\"\nservice = \"web\"\nupstream = \"{}\"\naction = \"reload\"\nvalidate = \"grep -q '^greeting = ' /etc/web/web.conf\"\nhealth = \"systemctl is-active --quiet web\"\ndirs = [\n  {{ local = \"/etc/web\", link = \"web/etc\", readonly = false }},\n  {{ local = \"/etc/default/web\", link = \"web/default/web\", file = true }},\n]\n",
        up.url()
    );
    m.put("/etc/provision/config.toml", &config, 0o644);
    m.sh("systemctl daemon-reload && systemctl enable --now web.service");
    show(&m, "cat /etc/provision/config.toml");
    show(&m, "systemctl is-active web");

    step("provision check");
    show(&m, &format!("{bin} check"));

    step("provision sync: release, bind mounts, reload");
    show(&m, &format!("{bin} sync"));
    show(&m, "findmnt -n -o TARGET,SOURCE /etc/web");
    show(&m, "cat /etc/web/web.conf");
    show(&m, "cat /var/log/web.reloads");

    step("push a change upstream, sync again: new files, one reload");
    let changed = conf.replace("hello from git", "hello again");
    up.commit(
        "main",
        &[("web/etc/web.conf", Some(&changed))],
        "web: new greeting",
    );
    show(&m, &format!("{bin} sync"));
    show(&m, "grep greeting /etc/web/web.conf");
    show(&m, "cat /var/log/web.reloads");

    step("nothing changed: a no-op pass touches nothing");
    show(&m, &format!("{bin} sync"));
    show(&m, "wc -l < /var/log/web.reloads");

    step(
        "someone edits /etc/web by hand: status and diff show the drift, the next pass restores it",
    );
    show(
        &m,
        "echo 'greeting = edited on the box' > /etc/web/web.conf",
    );
    show(&m, &format!("{bin} status"));
    show(&m, &format!("{bin} diff web"));
    show(&m, &format!("{bin} sync"));
    show(&m, "grep greeting /etc/web/web.conf");
    show(
        &m,
        &format!("grep -E '^provision_(in_sync|drift_files|deployed_commit_info)' {METRICS}"),
    );

    step("a commit its checker refuses: validate sees the candidate at /etc/web, nothing switches");
    let typo = changed.replace("greeting = ", "greting = ");
    up.commit("main", &[("web/etc/web.conf", Some(&typo))], "web: a typo");
    show(&m, &format!("{bin} sync"));
    show(&m, "grep greeting /etc/web/web.conf");
    show(&m, &format!("{bin} status"));
    show(
        &m,
        &format!("grep -E '^provision_rejected_commit_info' {METRICS}"),
    );
    show(&m, &format!("{bin} sync"));

    step("the fix is pushed: validated, switched, reloaded, healthy");
    let fixed = changed.replace("hello again", "hello, fixed");
    up.commit(
        "main",
        &[("web/etc/web.conf", Some(&fixed))],
        "web: fix the typo",
    );
    show(&m, &format!("{bin} sync"));
    show(&m, "grep greeting /etc/web/web.conf");
    show(&m, "wc -l < /var/log/web.reloads");

    step("a secret in Git: encrypted with the age CLI for the machine's own ssh host key");
    m.sh("test -e /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key");
    let host_key = m
        .read("/etc/ssh/ssh_host_ed25519_key.pub")
        .expect("the machine's host key");
    let sealed = age_encrypt(&host_key, "api-token = s3cr3t-demo-token\n");
    println!("$ age -a -R ssh_host_ed25519_key.pub  (the file in Git:)");
    for line in sealed.lines().take(2) {
        println!("  {line}");
    }
    up.commit(
        "main",
        &[("web/etc/api-token.age", Some(&sealed))],
        "web: an API token, for demo-host only",
    );
    m.put(
        "/etc/provision/config.toml",
        &config.replace("readonly = false }", "readonly = false, decrypt = true }"),
        0o644,
    );
    show(&m, &format!("{bin} sync"));
    show(&m, "ls -l /etc/web");
    show(&m, "cat /etc/web/api-token");
    show(&m, &format!("{bin} status"));

    step("the server goes away and the machine reboots: mounts come back from the local release");
    daemon.stop();
    m.poweroff();
    m.boot_again();
    show(
        &m,
        "systemctl is-active provision-mount@web.service web.service",
    );
    show(&m, "grep greeting /etc/web/web.conf");
    show(&m, &format!("{bin} sync"));

    println!("\ndemo finished in {:.1} s", start.elapsed().as_secs_f64());
}
