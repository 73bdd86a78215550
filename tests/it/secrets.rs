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
