//! How a pass fetches: protocol v2 over `git://` and smart HTTP, a mirror
//! holding only the files services mount, and libgit2 for servers that do
//! not speak v2.

use testkit as common;

use std::fs;
use std::path::Path;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// A smart HTTP server whose certificate provision trusts: every test of
/// this file runs provision with `SSL_CERT_DIR` naming one hashed
/// directory of the servers' certificates (as /etc/ssl/certs is), and no
/// `SSL_CERT_FILE`, as a systemd unit runs it.
fn https(base: &Path, protocol: Protocol) -> SmartHttp {
    let server = SmartHttp::start(base, protocol);
    trust(&server.ca, server.port());
    server
}

/// Adds `cert` (of the server on `port`) to the certificates provision
/// trusts in this file's tests.
fn trust(cert: &Path, port: u16) {
    let dir = std::env::temp_dir().join(format!("provision-fetch-test-ca-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("creating the CA directory");
    let name = format!("server-{port}.pem");
    fs::copy(cert, dir.join(name)).expect("copying the certificate");
    common::run(Command::new("openssl").arg("rehash").arg(&dir));
    std::env::set_var("SSL_CERT_DIR", &dir);
    std::env::remove_var("SSL_CERT_FILE");
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
    up.add_refs(5_000, 500);
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

/// A real HTTP proxy (tinyproxy) on 127.0.0.1, logging every request it
/// is asked; with `basic`, it asks for those credentials. Dropping it
/// stops it.
struct Tinyproxy {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    fn start(basic: Option<(&str, &str)>) -> Tinyproxy {
        let dir = tempfile::tempdir().expect("a directory for the proxy");
        let port = common::free_port();
        let log = dir.path().join("tinyproxy.log");
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Info\nMaxClients 20\nAllow 127.0.0.1\n",
            log.display()
        );
        if let Some((user, pass)) = basic {
            conf.push_str(&format!("BasicAuth {user} {pass}\n"));
        }
        let path = dir.path().join("tinyproxy.conf");
        fs::write(&path, conf).expect("writing the proxy's config");
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tinyproxy");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "tinyproxy did not listen on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Tinyproxy {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the proxy logged.
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// provision reaches an https upstream through a real proxy (a CONNECT
/// tunnel, the certificate checked end to end), from the `proxy` key or
/// from `https_proxy` as the units' environment file sets it; a dead
/// proxy fails the pass naming it and keeps the last good release;
/// `no_proxy` reaches the server directly.
#[test]
fn an_https_upstream_is_fetched_through_a_proxy_and_a_dead_one_is_named() {
    common::need_git!();
    if !common::require_tool("tinyproxy") {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("r");
    let first = seed(&up);
    let http = https(d.base(), Protocol::AsAsked);
    let proxy = Tinyproxy::start(None);
    let h = Host::new();
    let with_proxy = format!("proxy = \"{}\"", proxy.url());
    h.write_config(&app_config(&http.url("r"), &with_proxy));
    let out = h.sync(0);
    assert!(
        out.contains(&format!("app: deployed {}", &first[..10])),
        "{out}"
    );
    assert!(
        proxy
            .log()
            .contains(&format!("CONNECT 127.0.0.1:{}", http.port())),
        "the fetch went through the proxy:\n{}",
        proxy.log()
    );

    h.write_config(&app_config(&http.url("r"), ""));
    let second = up.commit("main", &[("app/etc/app.conf", Some("port = 2\n"))], "bump");
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let out = h
        .command(&["sync"])
        .env("https_proxy", &dead)
        .output()
        .expect("sync");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "proxy 127.0.0.1:{} (from https_proxy)",
            dead.rsplit(':').next().unwrap_or("")
        )),
        "the dead proxy is named: {}",
        text(&out)
    );
    assert!(
        h.deployed("app").to_string_lossy().contains(&first),
        "the last good release stays"
    );

    let out = h
        .command(&["sync"])
        .env("https_proxy", &dead)
        .env("no_proxy", "localhost,127.0.0.1")
        .output()
        .expect("sync");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("app: deployed {}", &second[..10])),
        "{}",
        text(&out)
    );
}

/// A proxy that asks for credentials gets them from
/// `proxy_credentials_file`, never from a password in the config, and a
/// refusal says which it was; the password appears in no output.
#[test]
fn a_proxy_asking_for_credentials_gets_them_from_a_file() {
    common::need_git!();
    if !common::require_tool("tinyproxy") {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("r");
    let first = seed(&up);
    let http = https(d.base(), Protocol::AsAsked);
    let proxy = Tinyproxy::start(Some(("deploy", "s3cret-pw")));
    let h = Host::new();
    let config = |extra: &str| {
        app_config(
            &http.url("r"),
            &format!("proxy = \"{}\"\n{extra}", proxy.url()),
        )
    };
    h.write_config(&config(""));
    let out = h.sync(1);
    assert!(
        out.contains("asks for credentials (HTTP 407): set proxy_credentials_file"),
        "{out}"
    );

    let in_url = app_config(
        &http.url("r"),
        &format!(
            "proxy = \"http://deploy:s3cret-pw@127.0.0.1:{}\"",
            proxy.port
        ),
    );
    h.write_config(&in_url);
    let out = h.run(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("proxy_credentials_file"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("s3cret-pw"), "{}", text(&out));

    let file = h.path().join("proxy-credentials");
    fs::write(&file, "deploy:wrong\n").expect("writing the credentials");
    common::run(Command::new("chmod").arg("600").arg(&file));
    h.write_config(&config(&format!(
        "proxy_credentials_file = \"{}\"",
        file.display()
    )));
    let out = h.sync(1);
    assert!(out.contains("refused its credentials (HTTP 40"), "{out}");
    fs::write(&file, "deploy:s3cret-pw\n").expect("writing the credentials");
    let out = h.sync(0);
    assert!(
        out.contains(&format!("app: deployed {}", &first[..10])),
        "{out}"
    );
    assert!(!out.contains("s3cret-pw"), "{out}");
}

/// A server answering 429 with `Retry-After` is not asked again before
/// that time: the next timer pass makes no request and says until when,
/// `status --json` and the metrics show the backoff, and `sync --now`
/// fetches anyway; a successful fetch ends the backoff.
#[test]
fn a_rate_limited_server_is_left_alone_until_its_retry_after() {
    common::need_git!();
    let d = GitDaemon::start();
    let up = d.repo("r");
    let first = seed(&up);
    let http = https(d.base(), Protocol::AsAsked);
    let h = Host::new();
    h.write_config(&app_config(&http.url("r"), "interval = 60"));
    h.sync(0);
    let second = up.commit("main", &[("app/etc/app.conf", Some("port = 2\n"))], "bump");

    http.rate_limit(Some(3600));
    http.take_sent();
    let out = h.sync(1);
    assert!(out.contains("HTTP 429"), "{out}");
    assert!(
        out.contains("backing off: the next pass fetches at"),
        "{out}"
    );
    assert_eq!(http.take_sent().1, 1, "one request, answered 429");
    let status = h.status_json();
    let until = status["backoff"]["until"]
        .as_u64()
        .expect("a backoff in status --json");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    assert!(
        until >= now + 3500 && until <= now + 3700,
        "Retry-After honoured: {until} vs {now}"
    );
    assert_eq!(status["backoff"]["failures"], 1);

    let out = h.sync(1);
    assert!(
        out.contains("backing off until") && out.contains("no connection was made"),
        "{out}"
    );
    assert_eq!(http.take_sent().1, 0, "no request inside the backoff");
    let metrics = fs::read_to_string(h.metrics_dir().join("provision.prom")).unwrap_or_default();
    assert!(
        metrics.contains(&format!(
            "provision_backoff_until_timestamp_seconds{{service=\"app\"}} {until}"
        )),
        "{metrics}"
    );
    assert!(
        h.deployed("app").to_string_lossy().contains(&first),
        "the last good release serves"
    );

    http.rate_limit(None);
    let out = h.run(&["sync", "--now"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("app: deployed {}", &second[..10])),
        "{}",
        text(&out)
    );
    assert!(
        h.status_json()["backoff"].is_null(),
        "a fetch that works ends the backoff"
    );
}

/// nginx serving `root` over https on 127.0.0.1 (a certificate this
/// file's provision trusts), logging every request.
struct Nginx {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(root: &Path) -> Nginx {
        let dir = tempfile::tempdir().expect("a directory for nginx");
        let port = common::free_port();
        let log = dir.path().join("access.log");
        let _ = common::smart_http::certificate(dir.path());
        trust(&dir.path().join("cert.pem"), port);
        let conf = dir.path().join("nginx.conf");
        fs::write(
            &conf,
            format!(
                "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\ndaemon off;\n\
                 events {{}}\nhttp {{\n  access_log {log};\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  \
                 fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  \
                 server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {d}/cert.pem; \
                 ssl_certificate_key {d}/key.pem; root {root}; }}\n}}\n",
                d = dir.path().display(),
                log = log.display(),
                root = root.display(),
            ),
        )
        .expect("writing nginx.conf");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "nginx did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// The access log's lines so far.
    fn requests(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `git update-server-info`, as a server's post-receive hook runs it; with
/// `earlier`, dated a minute back, as a push long before the poll is.
fn update_server_info(up: &Upstream, earlier: bool) {
    common::run(common::git_cmd(up.bare()).arg("update-server-info"));
    if earlier {
        common::run(
            Command::new("touch")
                .args(["-d", "1 minute ago"])
                .arg(up.bare().join("info/refs")),
        );
    }
}

#[test]
fn a_repository_served_as_static_files_deploys_and_a_no_op_poll_is_one_conditional_get() {
    common::need_git!();
    if !common::require_tool("nginx") {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("r");
    let first = seed(&up);
    update_server_info(&up, true);
    let nginx = Nginx::start(d.base());
    let url = format!("https://127.0.0.1:{}/r.git", nginx.port);
    let h = Host::new();
    h.write_config(&app_config(&url, ""));
    let out = h.sync(0);
    assert!(
        out.contains(&format!("app: deployed {}", &first[..10])),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(h.deployed("app").join("app/etc/app.conf")).expect("deployed file"),
        "port = 1\n"
    );

    let before = nginx.requests().len();
    let out = h.sync(0);
    assert!(out.contains("app: up to date"), "{out}");
    let poll: Vec<String> = nginx.requests()[before..].to_vec();
    assert_eq!(poll.len(), 1, "a no-op poll is one request: {poll:?}");
    assert!(
        poll[0].contains("GET /r.git/info/refs ") && poll[0].contains(" 304 "),
        "answered 304 Not Modified: {poll:?}"
    );

    // A change, then the same repository packed: both deploy.
    // A push after that poll is seen by the next one.
    let second = up.commit("main", &[("app/etc/app.conf", Some("port = 2\n"))], "two");
    update_server_info(&up, false);
    let out = h.sync(0);
    assert!(
        out.contains(&format!("app: deployed {}", &second[..10])),
        "{out}"
    );
    let third = up.commit("main", &[("app/etc/app.conf", Some("port = 3\n"))], "three");
    common::run(common::git_cmd(up.bare()).args(["repack", "-a", "-d", "-q"]));
    common::run(common::git_cmd(up.bare()).args(["prune-packed"]));
    update_server_info(&up, false);
    let out = h.sync(0);
    assert!(
        out.contains(&format!("app: deployed {}", &third[..10])),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(h.deployed("app").join("app/etc/app.conf")).expect("deployed file"),
        "port = 3\n"
    );
    assert!(
        nginx.requests().iter().any(|l| l.contains(".pack ")),
        "the packed objects came from a pack"
    );
}

/// A static server that swaps an object for another (a tampered bucket, a
/// poisoned cache) is caught: every object is checked against its id, the
/// pass fails naming both, and the last good release keeps serving.
#[test]
fn a_static_server_swapping_an_object_is_caught_and_the_last_good_release_stays() {
    common::need_git!();
    if !common::require_tool("nginx") {
        return;
    }
    let d = GitDaemon::start();
    let up = d.repo("r");
    let first = seed(&up);
    update_server_info(&up, true);
    let nginx = Nginx::start(d.base());
    let h = Host::new();
    h.write_config(&app_config(
        &format!("https://127.0.0.1:{}/r.git", nginx.port),
        "",
    ));
    h.sync(0);
    up.commit("main", &[("app/etc/app.conf", Some("port = 666\n"))], "two");
    update_server_info(&up, false);
    let wanted =
        common::run(common::git_cmd(up.bare()).args(["rev-parse", "main:app/etc/app.conf"]));
    let other = common::run(
        common::git_cmd(up.bare()).args(["rev-parse", &format!("{first}:app/etc/app.conf")]),
    );
    let loose = |id: &str| up.bare().join("objects").join(&id[..2]).join(&id[2..]);
    assert!(
        loose(&wanted).exists() && loose(&other).exists(),
        "both blobs are loose"
    );
    fs::copy(loose(&other), loose(&wanted)).expect("swapping the object");
    let out = h.sync(1);
    assert!(
        out.contains(&format!("the server sent {other} as object {wanted}")),
        "{out}"
    );
    assert!(
        h.deployed("app").to_string_lossy().contains(&first),
        "{out}"
    );
    assert_eq!(
        read(&h.deployed("app").join("app/etc/app.conf")),
        "port = 1\n"
    );
}
