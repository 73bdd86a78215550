//! `make bench`, transport part: what one no-op poll costs over ssh and
//! over static HTTP, with the peers in the same run.
//!
//! A repository with 10,000 tags and 1,000 branches (a forge's), served by
//! two real sshd on loopback, one with `AcceptEnv GIT_PROTOCOL` (protocol
//! v2 reaches upload-pack) and one as Debian ships it (v0), each behind a
//! byte-counting TCP forwarder; and the same repository with 3,000 tags as
//! static files behind nginx (git's dumb HTTP). Per client, after a first
//! fetch: the bytes of one no-op poll on the wire (both directions,
//! handshakes included), and the median wall time and CPU (the client and
//! its children: ssh, git's helpers) of 10 such polls. The clients:
//! provision through OpenSSH; provision with a ControlMaster kept between
//! polls; `git fetch` over the same ssh; provision and `git fetch` against
//! the v0 server (provision through OpenSSH there too, in v0 on the same
//! connection).
//!
//! Writes the "Transports" section of docs/BENCHMARKS.md and prints it.
//! Option: `--out PATH`.

use testkit as common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::host::{app_config, seed, Host};
use common::sshd::Sshd;
use common::{GitDaemon, Upstream};

#[path = "reconcile/proxy.rs"]
#[allow(dead_code)]
mod proxy;

use proxy::Proxy;

const HEADING: &str = "## Transports";
const POLLS: usize = 10;

/// CPU seconds (user + system) of the children waited for so far (their
/// own children included).
#[allow(unsafe_code)]
fn children_cpu() -> f64 {
    // SAFETY: rusage is plain data; getrusage fills it in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// One row: the bytes of the last poll, and median wall and CPU of
/// `POLLS` runs of `poll` (each must succeed).
struct Row {
    transport: &'static str,
    client: String,
    bytes: u64,
    connections: u64,
    wall_ms: f64,
    cpu_ms: f64,
}

fn measure(transport: &'static str, client: &str, proxy: &Proxy, poll: impl FnMut()) -> Row {
    measure_with(transport, client, proxy, false, poll)
}

/// What went through the forwarder since the last call; with `kept`, a
/// connection stays open between polls (a ControlMaster), so what it
/// carried so far is read without waiting for it to close.
fn traffic(proxy: &Proxy, kept: bool) -> proxy::Traffic {
    if !kept {
        return proxy.take();
    }
    thread::sleep(Duration::from_millis(100));
    proxy::Traffic {
        up: proxy.counts.up.swap(0, Ordering::SeqCst),
        down: proxy.counts.down.swap(0, Ordering::SeqCst),
        connections: proxy.counts.connections.swap(0, Ordering::SeqCst),
    }
}

fn measure_with(
    transport: &'static str,
    client: &str,
    proxy: &Proxy,
    kept: bool,
    mut poll: impl FnMut(),
) -> Row {
    poll();
    traffic(proxy, kept);
    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    let mut last = proxy::Traffic::default();
    for _ in 0..POLLS {
        let (cpu0, t0) = (children_cpu(), Instant::now());
        poll();
        walls.push(t0.elapsed().as_secs_f64() * 1e3);
        cpus.push((children_cpu() - cpu0) * 1e3);
        last = traffic(proxy, kept);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Row {
        transport,
        client: client.to_string(),
        bytes: last.up + last.down,
        connections: last.connections,
        wall_ms: median(&mut walls),
        cpu_ms: median(&mut cpus),
    }
}

/// known_hosts naming `sshd`'s key at the forwarder's port.
fn known_hosts(sshd: &Sshd, port: u16) -> PathBuf {
    let key = fs::read_to_string(sshd.path("host_key.pub")).expect("a host key");
    let key: Vec<&str> = key.split_whitespace().take(2).collect();
    let path = sshd.path(&format!("known_hosts_{port}"));
    fs::write(&path, format!("[127.0.0.1]:{port} {}\n", key.join(" ")))
        .expect("writing known_hosts");
    path
}

fn provision_poll(h: &Host) -> impl FnMut() + '_ {
    move || {
        let out = h.run(&["sync"]);
        assert!(
            out.status.success(),
            "provision sync: {}",
            common::output_text(&out)
        );
    }
}

fn ssh_rows(label: &'static str, v0: bool, sshd: &Sshd, up: &Upstream, rows: &mut Vec<Row>) {
    let proxy = Proxy::start(sshd.port);
    let kh = known_hosts(sshd, proxy.port);
    let key = sshd.path("client_key");
    let url = format!("ssh://root@127.0.0.1:{}{}", proxy.port, up.bare().display());
    let creds = format!(
        "ssh_key = \"{}\"\nssh_known_hosts = \"{}\"",
        key.display(),
        kh.display()
    );
    let h = Host::new();
    h.write_config(&app_config(&url, &creds));
    let client = if v0 {
        "provision (OpenSSH, v0 on the same connection)"
    } else {
        "provision (OpenSSH)"
    };
    rows.push(measure(label, client, &proxy, provision_poll(&h)));
    if !v0 {
        control_master_row(label, sshd, &proxy, &url, &creds, rows);
    }
    git_rows(label, &key, &kh, &proxy, &url, rows);
}

/// provision with a ControlMaster its ssh command keeps between polls.
fn control_master_row(
    label: &'static str,
    sshd: &Sshd,
    proxy: &Proxy,
    url: &str,
    creds: &str,
    rows: &mut Vec<Row>,
) {
    let mux = sshd.path("mux");
    fs::create_dir_all(&mux).expect("a directory for the mux socket");
    let h = Host::new();
    h.write_config(&app_config(
        url,
        &format!(
            "{creds}\nssh_command = \"ssh -o ControlMaster=auto -o ControlPath={}/%C -o ControlPersist=60 -o SendEnv=GIT_PROTOCOL\"",
            mux.display()
        ),
    ));
    rows.push(measure_with(
        label,
        "provision, ControlMaster kept",
        proxy,
        true,
        provision_poll(&h),
    ));
    let _ = Command::new("ssh")
        .args([
            "-o",
            &format!("ControlPath={}/%C", mux.display()),
            "-O",
            "exit",
            "-p",
        ])
        .arg(proxy.port.to_string())
        .arg("root@127.0.0.1")
        .stderr(Stdio::null())
        .status();
    proxy.take();
}

/// `git fetch` over the same ssh: following tags, as it does by default,
/// and with `--no-tags`.
fn git_rows(
    label: &'static str,
    key: &Path,
    kh: &Path,
    proxy: &Proxy,
    url: &str,
    rows: &mut Vec<Row>,
) {
    let clone = tempfile::tempdir().expect("a directory for git");
    let ssh = format!(
        "ssh -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
        key.display(),
        kh.display()
    );
    let dest = clone.path().join("r.git");
    common::run(
        Command::new("git")
            .env("GIT_SSH_COMMAND", &ssh)
            .args([
                "clone",
                "-q",
                "--bare",
                "--depth",
                "3",
                "--single-branch",
                "--branch",
                "main",
                url,
            ])
            .arg(&dest),
    );
    for (client, tags) in [
        ("git fetch (the same ssh)", None),
        ("git fetch --no-tags", Some("--no-tags")),
    ] {
        rows.push(measure(label, client, proxy, || {
            common::run(
                Command::new("git")
                    .env("GIT_SSH_COMMAND", &ssh)
                    .arg("--git-dir")
                    .arg(&dest)
                    .args(["fetch", "-q", "--depth", "3"])
                    .args(tags)
                    .args(["origin", "+refs/heads/main:refs/heads/main"]),
            );
        }));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let d = GitDaemon::start();
    let up = d.repo("r");
    seed(&up);
    up.add_refs(10_000, 1_000);
    let v2 = Sshd::start_with("AcceptEnv GIT_PROTOCOL\n", |_| {}).expect("sshd");
    let v0 = Sshd::start().expect("sshd");
    let mut rows = Vec::new();
    ssh_rows(
        "ssh, sshd with AcceptEnv GIT_PROTOCOL",
        false,
        &v2,
        &up,
        &mut rows,
    );
    ssh_rows("ssh, stock sshd (v0)", true, &v0, &up, &mut rows);
    let statics = d.repo("s");
    seed(&statics);
    statics.add_refs(3_000, 0);
    common::run(common::git_cmd(statics.bare()).arg("update-server-info"));
    common::run(
        Command::new("touch")
            .args(["-d", "1 minute ago"])
            .arg(statics.bare().join("info/refs")),
    );
    rows.push(static_row(d.base()));

    let mut section = format!(
        "{HEADING}\n\nOne no-op poll (nothing new upstream) per client, after a first fetch: bytes \
         on the wire in both directions (handshakes included) and connections, counted by a TCP \
         forwarder in front of the server; median wall time and CPU (the client and its children) \
         of {POLLS} polls. ssh: a repository with 10,000 tags and 1,000 branches, real sshd on \
         loopback (OpenSSH's default key exchange). Static: 3,000 tags behind nginx over https. \
         Measured by `cargo bench --bench transport` (part of `make bench`), in a run of its own.\n\n\
         Reading: over ssh, a poll that reaches upload-pack in protocol v2 (the server's sshd \
         accepts `GIT_PROTOCOL`) moves a few kilobytes where v0 moves the whole ref \
         advertisement, whatever the client; `git fetch` also asks for every tag (to follow them) \
         unless `--no-tags`. Most of a poll's time and CPU is ssh's own handshake: a ControlMaster \
         kept between polls leaves no new connection. A static repository's no-op \
         poll is one conditional GET answered 304.\n\n\
         | transport | client | bytes per poll | connections | wall (ms) | CPU (ms) |\n\
         | --- | --- | ---: | ---: | ---: | ---: |\n"
    );
    for r in &rows {
        section.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} |\n",
            r.transport, r.client, r.bytes, r.connections, r.wall_ms, r.cpu_ms
        ));
    }
    println!("{section}");
    if let Some(path) = out {
        common::replace_section(&path, HEADING, &section);
    }
}

/// provision polling a static repository behind nginx over https.
fn static_row(base: &Path) -> Row {
    let dir = tempfile::tempdir().expect("a directory for nginx");
    let _ = common::smart_http::certificate(dir.path());
    let port = common::free_port();
    let conf = dir.path().join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\ndaemon off;\n\
             events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  \
             fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  \
             server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {d}/cert.pem; \
             ssl_certificate_key {d}/key.pem; root {root}; }}\n}}\n",
            d = dir.path().display(),
            root = base.display(),
        ),
    )
    .expect("writing nginx.conf");
    let mut nginx = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .spawn()
        .expect("starting nginx");
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nginx did not listen");
        thread::sleep(Duration::from_millis(50));
    }
    let certs = dir.path().join("certs");
    fs::create_dir_all(&certs).expect("a CA directory");
    fs::copy(dir.path().join("cert.pem"), certs.join("server.pem"))
        .expect("copying the certificate");
    common::run(Command::new("openssl").arg("rehash").arg(&certs));
    let proxy = Proxy::start(port);
    let h = Host::new();
    h.write_config(&app_config(
        &format!("https://127.0.0.1:{}/s.git", proxy.port),
        "",
    ));
    let row = measure(
        "static files (dumb HTTP), 3,000 tags",
        "provision",
        &proxy,
        || {
            let out = h
                .command(&["sync"])
                .env("SSL_CERT_DIR", &certs)
                .env_remove("SSL_CERT_FILE")
                .output()
                .expect("provision sync");
            assert!(
                out.status.success(),
                "provision sync: {}",
                common::output_text(&out)
            );
        },
    );
    let _ = nginx.kill();
    let _ = nginx.wait();
    row
}
