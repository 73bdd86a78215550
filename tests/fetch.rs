//! How a pass fetches: protocol v2 over `git://` and smart HTTP, a mirror
//! holding only the files services mount, and libgit2 for servers that do
//! not speak v2.

use testkit as common;

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use common::host::{app_config, read, seed, Host};
use common::smart_http::{Protocol, SmartHttp};
use common::{GitDaemon, Upstream};

/// Lets clients ask for a partial clone, as hosting servers do.
fn allow_filter(up: &Upstream) {
    common::run(common::git_cmd(up.bare()).args(["config", "uploadpack.allowFilter", "true"]));
}

/// The id of `path` in `rev` of the upstream.
fn blob_id(up: &Upstream, rev: &str, path: &str) -> String {
    common::run(common::git_cmd(up.bare()).args(["rev-parse", &format!("{rev}:{path}")]))
}

/// Whether the mirror holds object `id`.
fn holds(mirror: &Path, id: &str) -> bool {
    Command::new("git")
        .arg("-C")
        .arg(mirror)
        .args(["cat-file", "-e", id])
        .status()
        .is_ok_and(|s| s.success())
}

/// `count` tags and `branches` branches on the head, packed like a
/// server's refs.
fn add_refs(up: &Upstream, tags: usize, branches: usize) {
    let head = up.head("main");
    let mut input = String::new();
    for i in 0..tags {
        input.push_str(&format!("create refs/tags/v{i:05} {head}\n"));
    }
    for i in 0..branches {
        input.push_str(&format!("create refs/heads/feature-{i:04} {head}\n"));
    }
    let mut child = common::git_cmd(up.bare())
        .args(["update-ref", "--stdin"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawning git update-ref");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .expect("writing refs");
    assert!(child.wait().expect("git update-ref").success());
    common::run(common::git_cmd(up.bare()).args(["pack-refs", "--all"]));
}

/// A smart HTTP server whose certificate provision trusts: every test of
/// this file runs provision with `SSL_CERT_DIR` naming one hashed
/// directory of the servers' certificates (as /etc/ssl/certs is), and no
/// `SSL_CERT_FILE`, as a systemd unit runs it.
fn https(base: &Path, protocol: Protocol) -> SmartHttp {
    let server = SmartHttp::start(base, protocol);
    let dir = std::env::temp_dir().join(format!("provision-fetch-test-ca-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("creating the CA directory");
    let name = format!("server-{}.pem", server.port());
    fs::copy(&server.ca, dir.join(name)).expect("copying the certificate");
    common::run(Command::new("openssl").arg("rehash").arg(&dir));
    std::env::set_var("SSL_CERT_DIR", &dir);
    std::env::remove_var("SSL_CERT_FILE");
    server
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn over_smart_http_the_mirror_holds_only_the_mounted_files_and_rolls_back_offline() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    allow_filter(&up);
    let first = seed(&up);
    let http = https(d.base(), Protocol::AsAsked);
    let h = Host::new();
    h.write_config(&app_config(&http.url("r"), "depth = 3"));
    let out = h.sync(0);
    assert!(
        out.contains(&format!("app: deployed {}", &first[..10])),
        "{out}"
    );
    let rel = h.deployed("app");
    assert_eq!(read(&rel.join("app/etc/app.conf")), "port = 1\n");
    assert_eq!(read(&rel.join("app/default")), "OPTS=-v\n");

    let mirror = &h.mirrors()[0];
    assert!(holds(mirror, &blob_id(&up, "main", "app/etc/app.conf")));
    assert!(
        !holds(mirror, &blob_id(&up, "main", "other/secret.conf")),
        "a file no service mounts is not in the mirror"
    );
    assert!(holds(
        mirror,
        &common::run(common::git_cmd(up.bare()).args(["rev-parse", "main^{tree}"]))
    ));

    let second = up.commit(
        "main",
        &[
            ("app/etc/app.conf", Some("port = 2\n")),
            ("other/secret.conf", Some("still not for app\n")),
        ],
        "bump",
    );
    let out = h.sync(0);
    assert!(
        out.contains(&format!("app: deployed {}", &second[..10])),
        "{out}"
    );
    assert_eq!(
        read(&h.deployed("app").join("app/etc/app.conf")),
        "port = 2\n"
    );
    // A change brings what changed, in one download; what the first
    // download left out stays out.
    assert!(!holds(mirror, &blob_id(&up, &first, "other/secret.conf")));

    // The server goes away: the window's files are on disk.
    http.set_down(true);
    let out = h.run_mounted(&["rollback", "app", &first[..12]]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        read(&h.deployed("app").join("app/etc/app.conf")),
        "port = 1\n"
    );
    let out = h.run(&["diff", "--upstream", "app"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("+port = 2"), "{}", text(&out));
}

#[test]
fn a_service_sharing_a_mirror_gets_its_own_files_when_it_first_runs() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    allow_filter(&up);
    seed(&up);
    let h = Host::new();
    let local = h.root().join("srv/other");
    h.write_config(&format!(
        "{}\n[[services]]\nmachine = \"test-host\"\nservice = \"other\"\nupstream = \"{}\"\ndirs = [ {{ local = \"{}\", link = \"other\" }} ]\n",
        app_config(&up.url(), ""),
        up.url(),
        local.display()
    ));
    let out = h.run(&["sync", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mirror = &h.mirrors()[0];
    assert!(!holds(mirror, &blob_id(&up, "main", "other/secret.conf")));
    let out = h.run(&["sync", "other"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        read(&h.deployed("other").join("other/secret.conf")),
        "not for app\n"
    );
}

#[test]
fn a_no_op_poll_asks_for_the_followed_branch_alone_whatever_the_refs() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    add_refs(&up, 5_000, 500);
    let http = https(d.base(), Protocol::AsAsked);
    let h = Host::new();
    h.write_config(&app_config(&http.url("r"), ""));
    h.sync(0);
    http.take_sent();
    let out = h.sync(0);
    assert!(out.contains("app: up to date"), "{out}");
    let (bytes, requests) = http.take_sent();
    assert!(
        bytes < 1024,
        "a no-op poll received {bytes} bytes of bodies in {requests} requests"
    );
    assert_eq!(requests, 1, "a no-op poll is one ls-refs request");
    // The TLS session is kept for the next poll to resume; a damaged one
    // only costs a full handshake.
    let session = h.mirrors()[0].join("provision-tls-session");
    assert!(session.is_file(), "{}", session.display());
    fs::write(&session, b"not a session").expect("damaging the session");
    assert!(h.sync(0).contains("app: up to date"));
}

#[test]
fn an_https_server_without_protocol_v2_is_named_and_the_deployment_kept() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    let first = seed(&up);
    let http = https(d.base(), Protocol::AsAsked);
    let h = Host::new();
    h.write_config(&app_config(&http.url("r"), ""));
    h.sync(0);
    // The same repository, now behind a server that drops `Git-Protocol`.
    let old = https(d.base(), Protocol::V0Only);
    h.write_config(&app_config(&old.url("r"), ""));
    up.commit("main", &[("app/etc/app.conf", Some("port = 2\n"))], "bump");
    let out = h.sync(1);
    assert!(out.contains(&old.url("r")), "{out}");
    assert!(out.contains("does not speak git's protocol v2"), "{out}");
    assert!(!out.contains("rebuil"), "{out}");
    assert_eq!(
        read(&h.deployed("app").join("app/etc/app.conf")),
        "port = 1\n"
    );
    assert!(h.deployed("app").to_string_lossy().contains(&first));
}

/// A server holding the token redirects to another origin (another port
/// here: scheme, host and port make an origin), which records what it is
/// sent: the token stays with the server it was configured for. A
/// redirect within the origin keeps it (that server still asks for it).
#[test]
fn https_credentials_never_follow_a_redirect_to_another_origin() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    let first = seed(&up);
    common::run(
        Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(up.bare())
            .arg(d.base().join("moved.git")),
    );
    let holder = https(d.base(), Protocol::AsAsked);
    let elsewhere = https(d.base(), Protocol::AsAsked);
    holder.require("deploy", "s3cret");
    let h = Host::new();
    let token = h.path().join("token");
    fs::write(&token, "s3cret\n").expect("writing the token");
    let extra = format!(
        "https_user = \"deploy\"\nhttps_token_file = \"{}\"",
        token.display()
    );

    holder.redirect("/r.git", &elsewhere.url("r"));
    h.write_config(&app_config(&holder.url("r"), &extra));
    let out = h.sync(0);
    assert!(
        out.contains(&format!("app: deployed {}", &first[..10])),
        "{out}"
    );
    assert_eq!(
        elsewhere.authorizations(),
        Vec::<String>::new(),
        "the token was sent to another origin"
    );
    assert!(!holder.authorizations().is_empty());

    holder.redirect("/old.git", &holder.url("moved"));
    let h = Host::new();
    fs::write(h.path().join("token"), "s3cret\n").expect("writing the token");
    let extra = extra.replace(
        &token.display().to_string(),
        &h.path().join("token").display().to_string(),
    );
    h.write_config(&app_config(&holder.url("old"), &extra));
    let out = h.sync(0);
    assert!(
        out.contains(&format!("app: deployed {}", &first[..10])),
        "{out}"
    );
}

#[test]
fn https_credentials_come_from_the_token_file_and_a_refusal_names_it() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    let http = https(d.base(), Protocol::AsAsked);
    http.require("deploy", "s3cret");
    let h = Host::new();
    h.write_config(&app_config(&http.url("r"), ""));
    let out = h.sync(1);
    assert!(
        out.contains("asks for credentials: set https_user and https_token_file"),
        "{out}"
    );

    let token = h.path().join("token");
    fs::write(&token, "wrong\n").expect("writing the token");
    let extra = format!(
        "https_user = \"deploy\"\nhttps_token_file = \"{}\"",
        token.display()
    );
    h.write_config(&app_config(&http.url("r"), &extra));
    let out = h.sync(1);
    assert!(
        out.contains(&format!(
            "https authentication was rejected for {} with token file {}",
            http.url("r"),
            token.display()
        )),
        "{out}"
    );

    fs::write(&token, "s3cret\n").expect("writing the token");
    let out = h.sync(0);
    assert!(out.contains("app: deployed"), "{out}");
}
