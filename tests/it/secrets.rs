//! Secrets in Git: files encrypted by the reference `age` CLI for a
//! machine's ssh host key (or an age key), decrypted into the private
//! release by `provision sync` and never shown: every output an operator
//! or a web page sees is searched for the plaintext. A file for another
//! key fails the pass, names the file and the identity, and leaves the
//! last good release serving.

use testkit as common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::host::{read, Host};
use common::{GitDaemon, Upstream};

/// What the secrets hold: distinctive, so that a leak anywhere is found.
const FIRST: &str = "tls-private-FIRST-f1e2d3c4b5a6\n";
const SECOND: &str = "tls-private-SECOND-a9b8c7d6e5f4\n";

/// A machine's ssh host key stand-in: `DIR/host_key` and `.pub`.
fn host_key(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    common::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
            .arg(&key),
    );
    key
}

/// `plaintext` encrypted by the reference CLI for the public key file
/// `recipients` (`age -R`), ASCII-armored.
fn age_encrypt(recipients: &Path, plaintext: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    fs::write(&input, plaintext).expect("writing plaintext");
    let out = Command::new("age")
        .args(["-a", "-R"])
        .arg(recipients)
        .arg(&input)
        .output()
        .expect("running age");
    assert!(out.status.success(), "age: {}", common::output_text(&out));
    String::from_utf8(out.stdout).expect("armored output")
}

fn config(url: &str, identity: &Path, extra: &str) -> String {
    format!(
        r#"
[[services]]
machine = "test-host"
service = "app"
upstream = "{url}"
age_identity = "{}"
{extra}
dirs = [
  {{ local = "/etc/app", link = "app/etc", decrypt = true }},
  {{ local = "/etc/default/app", link = "app/default", file = true }},
]
"#,
        identity.display()
    )
}

fn seed(up: &Upstream, encrypted: &str) -> String {
    up.commit(
        "main",
        &[
            ("app/etc/app.conf", Some("port = 1\n")),
            ("app/etc/tls.key.age", Some(encrypted)),
            ("app/default", Some("OPTS=-v\n")),
        ],
        "seed",
    )
}

/// Everything the operator's tools show of the service.
fn every_output(h: &Host) -> String {
    let mut all = String::new();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["history", "app"],
        &["diff", "app"],
        &["diff", "app", "--upstream"],
        &["check"],
    ] {
        all.push_str(&common::output_text(&h.run(args)));
    }
    all.push_str(&h.metrics_text());
    all.push_str(&fs::read_to_string(h.state().join("app/state.json")).unwrap_or_default());
    all
}

fn assert_hidden(text: &str, secret: &str) {
    let secret = secret.trim();
    assert!(!text.contains(secret), "the plaintext leaked:\n{text}");
}

#[test]
fn a_file_encrypted_by_the_age_cli_is_deployed_decrypted_and_never_shown() {
    common::need_git!();
    if !common::require_tool("age") {
        return;
    }
    let keys = tempfile::tempdir().expect("tempdir");
    let key = host_key(keys.path(), "ssh_host_ed25519_key");
    let public = key.with_extension("pub");
    let d = GitDaemon::start();
    let up = d.repo("r");
    let first = seed(&up, &age_encrypt(&public, FIRST));
    let h = Host::new();
    h.write_config(&config(&up.url(), &key, ""));
    let out = h.sync(0);
    assert!(out.contains("app: deployed"), "{out}");
    let release = h.deployed("app");
    let deployed = release.join("app/etc/tls.key");
    assert_eq!(read(&deployed), FIRST);
    let mode = fs::metadata(&deployed).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "a decrypted file is root's alone");
    assert!(!release.join("app/etc/tls.key.age").exists());
    assert_eq!(read(&release.join("app/etc/app.conf")), "port = 1\n");
    assert_hidden(&out, FIRST);

    // Drift in a secret is reported by name, not by content.
    fs::write(&deployed, "edited by hand\n").expect("editing the release");
    let diff = common::output_text(&h.run(&["diff", "app"]));
    assert!(
        diff.contains("secret") && diff.contains("tls.key") && !diff.contains("edited by hand"),
        "{diff}"
    );
    fs::write(&deployed, FIRST).expect("restoring");

    // A new secret whose validate prints the file it checks: refused, and
    // the output recorded says so without the plaintext.
    up.commit(
        "main",
        &[("app/etc/tls.key.age", Some(&age_encrypt(&public, SECOND)))],
        "rotate",
    );
    let validate = format!(
        "validate = \"cat {}/etc/app/tls.key; exit 1\"",
        h.root().display()
    );
    h.write_config(&config(&up.url(), &key, &validate));
    let out = h.sync(1);
    assert!(out.contains("validate"), "{out}");
    let all = format!("{out}{}", every_output(&h));
    assert!(all.contains("[secret app/etc/tls.key]"), "{all}");
    assert!(
        all.contains(&format!(
            "secret {}/etc/app/tls.key differs",
            h.root().display()
        )),
        "{all}"
    );
    assert_hidden(&all, FIRST);
    assert_hidden(&all, SECOND);
    assert_eq!(h.status_json()["deployed"]["commit"], first.as_str());
}

#[test]
fn a_file_for_another_key_fails_the_pass_naming_it_and_the_old_release_serves() {
    common::need_git!();
    if !common::require_tool("age") {
        return;
    }
    let keys = tempfile::tempdir().expect("tempdir");
    let key = host_key(keys.path(), "ssh_host_ed25519_key");
    let other = host_key(keys.path(), "other_machine_key");
    let d = GitDaemon::start();
    let up = d.repo("r");
    let first = seed(&up, &age_encrypt(&key.with_extension("pub"), FIRST));
    let h = Host::new();
    h.write_config(&config(&up.url(), &key, ""));
    h.sync(0);
    up.commit(
        "main",
        &[(
            "app/etc/tls.key.age",
            Some(&age_encrypt(&other.with_extension("pub"), SECOND)),
        )],
        "for another machine",
    );
    let out = h.sync(1);
    assert!(
        out.contains(&format!(
            "cannot decrypt app/etc/tls.key.age with age identity {}",
            key.display()
        )) && out.contains("not encrypted for this key"),
        "{out}"
    );
    let status = h.status_json();
    assert_eq!(status["deployed"]["commit"], first.as_str(), "{status}");
    assert_eq!(status["last_pass"]["undecryptable"], true, "{status}");
    assert!(h
        .metrics_text()
        .lines()
        .any(|l| l == "provision_secret_undecryptable{service=\"app\"} 1"));
    assert_eq!(read(&h.deployed("app").join("app/etc/tls.key")), FIRST);
    let all = format!("{out}{}", every_output(&h));
    assert_hidden(&all, FIRST);
    assert_hidden(&all, SECOND);

    // A missing identity is named too.
    let gone = keys.path().join("gone");
    h.write_config(&config(&up.url(), &gone, ""));
    let out = h.sync(1);
    assert!(
        out.contains(&format!("reading age identity {}", gone.display())),
        "{out}"
    );
    let check = h.run(&["check"]);
    let said = common::output_text(&check);
    assert_eq!(check.status.code(), Some(1), "{said}");
    assert!(said.contains(&gone.display().to_string()), "{said}");
    h.write_config(&config(&up.url(), &key, ""));
    let check = h.run(&["check"]);
    let said = common::output_text(&check);
    assert_eq!(check.status.code(), Some(0), "{said}");
    assert!(said.contains("the age identity that decrypts"), "{said}");
}

#[test]
fn an_age_key_decrypts_a_single_file_and_a_plain_twin_is_refused() {
    common::need_git!();
    if !common::require_tool("age") {
        return;
    }
    let keys = tempfile::tempdir().expect("tempdir");
    let identity = keys.path().join("age.key");
    common::run(Command::new("age-keygen").arg("-o").arg(&identity));
    let public = keys.path().join("age.pub");
    let recipient = common::run(Command::new("age-keygen").arg("-y").arg(&identity));
    fs::write(&public, format!("{recipient}\n")).expect("writing the recipient");
    let d = GitDaemon::start();
    let up = d.repo("r");
    up.commit(
        "main",
        &[
            ("app/etc/app.conf", Some("port = 1\n")),
            ("app/token.age", Some(&age_encrypt(&public, FIRST))),
        ],
        "seed",
    );
    let h = Host::new();
    let text = format!(
        r#"
[[services]]
machine = "test-host"
service = "app"
upstream = "{}"
age_identity = "{}"
dirs = [
  {{ local = "/etc/app", link = "app/etc", decrypt = true }},
  {{ local = "/etc/app-token", link = "app/token.age", file = true, decrypt = true, mode = "0640" }},
]
"#,
        up.url(),
        identity.display()
    );
    h.write_config(&text);
    let out = h.sync(0);
    assert!(out.contains("app: deployed"), "{out}");
    let token = h.deployed("app").join("app/token.age");
    assert_eq!(
        read(&token),
        FIRST,
        "the link is the file: decrypted in place"
    );
    let mode = fs::metadata(&token).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640, "the dir's mode wins");

    up.commit(
        "main",
        &[("app/etc/app.conf.age", Some(&age_encrypt(&public, SECOND)))],
        "a twin",
    );
    let out = h.sync(1);
    assert!(
        out.contains("app/etc/app.conf and app/etc/app.conf.age are both in the repository"),
        "{out}"
    );
    assert_hidden(&out, SECOND);
}

/// Runs `provision -c CONFIG fleet --ssh-config SSH ARGS` with `dir` as
/// the working directory; returns (exit code, stdout, stderr).
fn fleet(dir: &Path, config: &Path, ssh: &Path, args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new(common::provision_bin())
        .current_dir(dir)
        .arg("--config")
        .arg(config)
        .args(["fleet", "--ssh-config"])
        .arg(ssh)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running provision fleet");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `age -d -i KEY FILE`, by the reference CLI; `None` when it cannot.
fn age_decrypt(key: &Path, file: &Path) -> Option<String> {
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(key)
        .arg(file)
        .output()
        .expect("running age");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn fleet_encrypt_seals_for_the_pinned_host_keys_and_rekey_follows_the_config() {
    if !common::require_tool("age") || !common::require_tool("age-keygen") {
        return;
    }
    common::need_git!();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let keys: Vec<PathBuf> = ["web1", "web2", "db1"]
        .iter()
        .map(|m| host_key(d, &format!("{m}_host_key")))
        .collect();
    let operator = d.join("operator.key");
    common::run(Command::new("age-keygen").arg("-o").arg(&operator));
    let operator_public = common::run(Command::new("age-keygen").arg("-y").arg(&operator));
    // known_hosts pins web1 (hashed) and web2; db1 is not pinned yet.
    let known_hosts = d.join("known_hosts");
    let line = |port: u16, key: &Path| {
        let public = read(&key.with_extension("pub"));
        let public: Vec<&str> = public.split_whitespace().take(2).collect();
        format!("[127.0.0.1]:{port} {}\n", public.join(" "))
    };
    fs::write(
        &known_hosts,
        format!("{}{}", line(2201, &keys[0]), line(2202, &keys[1])),
    )
    .expect("writing known_hosts");
    common::run(
        Command::new("ssh-keygen")
            .arg("-H")
            .arg("-f")
            .arg(&known_hosts),
    );
    let ssh = d.join("ssh_config");
    let mut text = String::new();
    for (name, port) in [("web1", 2201), ("web2", 2202), ("db1", 2203)] {
        text.push_str(&format!(
            "Host {name}\n  HostName 127.0.0.1\n  Port {port}\n  UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n",
            known_hosts.display()
        ));
    }
    fs::write(&ssh, text).expect("writing ssh_config");
    let config = d.join("config.toml");
    let write_config = |app_machines: &str| {
        fs::write(
            &config,
            format!(
                r#"
[[services]]
machine = {app_machines}
service = "app"
upstream = "git://127.0.0.1/r.git"
dirs = [{{ local = "/etc/app", link = "app/etc", decrypt = true }}]

[[services]]
machine = "db1"
service = "db"
upstream = "git://127.0.0.1/r.git"
dirs = [{{ local = "/etc/db", link = "db" }}]
"#
            ),
        )
        .expect("writing the config");
    };
    write_config(r#"["web1", "web2"]"#);
    let plain = d.join("tls.key");
    fs::write(&plain, FIRST).expect("writing the secret");

    let checkout = d.join("checkout");
    fs::create_dir_all(checkout.join("app/etc")).expect("mkdir");
    common::run(Command::new("git").arg("init").arg("-q").arg(&checkout));
    let sealed = checkout.join("app/etc/tls.key.age");
    let (code, stdout, stderr) = fleet(
        d,
        &config,
        &ssh,
        &[
            "encrypt",
            "--service",
            "app",
            "--recipient",
            &operator_public,
            "tls.key",
            "-o",
            &sealed.display().to_string(),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("encrypted for 2 machine(s) (web1, web2) and 1 further recipient(s)"),
        "{stderr}"
    );
    assert_hidden(
        &format!("{}{stderr}", String::from_utf8_lossy(&stdout)),
        FIRST,
    );
    assert_hidden(&read(&sealed), FIRST);
    assert_eq!(age_decrypt(&keys[0], &sealed).as_deref(), Some(FIRST));
    assert_eq!(age_decrypt(&keys[1], &sealed).as_deref(), Some(FIRST));
    assert_eq!(age_decrypt(&operator, &sealed).as_deref(), Some(FIRST));
    assert_eq!(age_decrypt(&keys[2], &sealed), None, "db1 does not run app");

    // A machine whose key nothing pins is named, and nothing is written.
    write_config(r#"["web1", "db1"]"#);
    let (code, _, stderr) = fleet(
        d,
        &config,
        &ssh,
        &["encrypt", "--service", "app", "tls.key", "-o", "never.age"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("no ssh-ed25519 host key of db1 (as [127.0.0.1]:2203)")
            && stderr.contains("--keyscan"),
        "{stderr}"
    );
    assert!(!d.join("never.age").exists());

    // Once db1 is pinned, rekey re-encrypts for web1 and db1 (the
    // machines that run app now) and the operator.
    fs::write(
        &known_hosts,
        format!("{}{}", read(&known_hosts), line(2203, &keys[2])),
    )
    .expect("pinning db1");
    let (code, _, stderr) = fleet(
        d,
        &config,
        &ssh,
        &[
            "rekey",
            "-i",
            &operator.display().to_string(),
            "--recipient",
            &operator_public,
            &sealed.display().to_string(),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("(app) re-encrypted for 2 machine(s) (web1, db1)"),
        "{stderr}"
    );
    assert_hidden(&stderr, FIRST);
    assert_eq!(age_decrypt(&keys[2], &sealed).as_deref(), Some(FIRST));
    assert_eq!(age_decrypt(&keys[0], &sealed).as_deref(), Some(FIRST));
    assert_eq!(
        age_decrypt(&keys[1], &sealed),
        None,
        "web2 no longer runs app"
    );
    assert_eq!(age_decrypt(&operator, &sealed).as_deref(), Some(FIRST));
}

/// On a booted machine, with no `age_identity`: the machine's own
/// /etc/ssh/ssh_host_ed25519_key decrypts, the service's user reads the
/// file through its mount and no other user does, and the journal, the
/// status and the metrics never carry the plaintext; a file for another
/// machine leaves the old secret serving.
#[test]
fn a_booted_machine_decrypts_with_its_own_host_key() {
    common::need_machine!("age", "setpriv");
    const BIN: &str = env!("CARGO_BIN_EXE_provision");
    let keys = tempfile::tempdir().expect("tempdir");
    let key = host_key(keys.path(), "ssh_host_ed25519_key");
    let other = host_key(keys.path(), "other_host_key");
    let d = GitDaemon::start();
    let up = d.repo("cfg");
    up.commit(
        "main",
        &[
            ("web/etc/web.conf", Some("greeting = one\n")),
            (
                "web/etc/tls.key.age",
                Some(&age_encrypt(&key.with_extension("pub"), FIRST)),
            ),
        ],
        "seed",
    );
    let m = common::container::Machine::boot("vault1");
    common::container::install_provision(&m, BIN);
    m.put("/etc/ssh/ssh_host_ed25519_key", &read(&key), 0o600);
    m.put(
        "/etc/systemd/system/web.service",
        "[Service]\nExecStart=/bin/sleep infinity\n",
        0o644,
    );
    m.put(
        "/etc/provision/config.toml",
        &format!(
            "[[services]]\nmachine = \"vault1\"\nservice = \"web\"\nuser = \"www-data\"\nupstream = \"{}\"\ndirs = [ {{ local = \"/etc/web\", link = \"web/etc\", decrypt = true }} ]\n",
            up.url()
        ),
        0o644,
    );
    let (code, out) = m.sh_status(&format!("{BIN} sync"));
    assert_eq!(code, 0, "{out}");
    assert_eq!(m.read("/etc/web/tls.key").as_deref(), Some(FIRST));
    assert_eq!(
        m.sh("stat -c '%a %U' /etc/web/tls.key").trim(),
        "600 www-data"
    );
    let as_user = |user: &str| {
        m.sh_status(&format!(
            "setpriv --reuid {user} --regid {user} --clear-groups cat /etc/web/tls.key"
        ))
    };
    assert_eq!(as_user("www-data"), (0, FIRST.to_string()));
    let (code, said) = as_user("nobody");
    assert_ne!(code, 0, "another user cannot read it: {said}");
    assert_hidden(&said, FIRST);

    up.commit(
        "main",
        &[(
            "web/etc/tls.key.age",
            Some(&age_encrypt(&other.with_extension("pub"), SECOND)),
        )],
        "for another machine",
    );
    let (code, failed) = m.sh_status(&format!("{BIN} sync"));
    assert_eq!(code, 1, "{failed}");
    assert!(
        failed.contains(
            "cannot decrypt web/etc/tls.key.age with age identity /etc/ssh/ssh_host_ed25519_key"
        ),
        "{failed}"
    );
    assert_eq!(
        m.read("/etc/web/tls.key").as_deref(),
        Some(FIRST),
        "the old secret serves"
    );
    let mut all = format!("{out}{failed}");
    for cmd in [
        format!("{BIN} status --json"),
        format!("{BIN} status"),
        format!("{BIN} history web"),
        format!("{BIN} diff web --upstream"),
        "journalctl --no-pager -o cat".to_string(),
        "cat /var/lib/prometheus/node-exporter/provision.prom".to_string(),
    ] {
        all.push_str(&m.sh_status(&cmd).1);
    }
    assert!(all.contains("provision_secret_undecryptable"), "{all}");
    assert_hidden(&all, FIRST);
    assert_hidden(&all, SECOND);
}
