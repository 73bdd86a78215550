//! `make bench`, scale part: the fleet's views at 1,000 and 10,000
//! machines.
//!
//! A stand-in of Prometheus's HTTP API (`/api/v1/query`, the instant
//! vector JSON a real Prometheus writes) answers every `provision_*`
//! family with one series per machine, as node_exporters scraped with
//! `instance` = the machine would. Measured: `provision fleet status
//! --prometheus` (wall, CPU and peak RSS of the process), and `fleet
//! serve --prometheus`'s overview page (size, first load, then from the
//! cache).
//!
//! Writes the "Fleet at scale" section of docs/BENCHMARKS.md and prints
//! it. Options: `--out PATH`, `--quick` (1,000 machines only).

use testkit as common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HEADING: &str = "## Fleet at scale";

/// The families the stand-in serves, with the extra label each carries.
const FAMILIES: [(&str, Option<&str>); 13] = [
    ("provision_deployed_commit_info", Some("commit")),
    ("provision_upstream_commit_info", Some("commit")),
    ("provision_frozen", None),
    ("provision_in_sync", None),
    ("provision_last_pass_success", None),
    ("provision_last_pass_timestamp_seconds", None),
    ("provision_drift_files", None),
    ("provision_mounts_ok", None),
    ("provision_unit_active", None),
    ("provision_rollout_wait_until_timestamp_seconds", None),
    ("provision_backoff_until_timestamp_seconds", None),
    ("provision_fetched_from_info", Some("upstream")),
    ("provision_secret_undecryptable", None),
];

fn name(i: usize) -> String {
    format!("m{i:05}.example.net")
}

/// One series of `family` for machine `i`, as Prometheus writes it.
fn series(family: &str, extra: Option<&str>, i: usize, now: u64) -> String {
    let label = match extra {
        Some("commit") => format!(",\"commit\":\"{}\"", "ab".repeat(20)),
        Some(k) => format!(",\"{k}\":\"https://git.example.net/ops/config\""),
        None => String::new(),
    };
    let value = match family {
        "provision_last_pass_timestamp_seconds" => now as f64,
        "provision_frozen" | "provision_drift_files" | "provision_secret_undecryptable" => 0.0,
        _ => 1.0,
    };
    format!(
        "{{\"metric\":{{\"__name__\":\"{family}\",\"instance\":\"{}:9100\",\"job\":\"node\",\"service\":\"web\"{label}}},\"value\":[{now}.123,\"{value}\"]}}",
        name(i)
    )
}

/// The answer to `query`: every family it names, `n` series each.
fn answer(query: &str, n: usize, now: u64) -> String {
    let mut out =
        String::from("{\"status\":\"success\",\"data\":{\"resultType\":\"vector\",\"result\":[");
    let mut first = true;
    for (family, extra) in FAMILIES {
        if !query.contains(family) {
            continue;
        }
        for i in 0..n {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&series(family, extra, i, now));
        }
    }
    out.push_str("]}}");
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() + 1 => {
                let v =
                    u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00"), 16)
                        .unwrap_or(b'?');
                out.push(v);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves the stand-in for `n` machines on a free port; returns its URL.
fn stand_in(n: usize) -> String {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("binding the stand-in"));
    let port = server.server_addr().to_ip().expect("an IP address").port();
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let url = req.url().to_string();
            let query = url
                .split_once("query=")
                .map(|(_, q)| percent_decode(q))
                .unwrap_or_default();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let body = answer(&query, n, now);
            let header =
                tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
                    .expect("header");
            let _ = req.respond(tiny_http::Response::from_string(body).with_header(header));
        }
    });
    format!("http://127.0.0.1:{port}")
}

fn config(dir: &Path, n: usize) -> PathBuf {
    let names: Vec<String> = (0..n).map(|i| format!("\"{}\"", name(i))).collect();
    let path = dir.join(format!("config-{n}.toml"));
    fs::write(
        &path,
        format!(
            "[[services]]\nmachine = [{}]\nservice = \"web\"\nupstream = \"https://git.example.net/ops/config\"\n\
             dirs = [ {{ local = \"/etc/web\", link = \"web\" }} ]\n",
            names.join(", ")
        ),
    )
    .expect("config");
    path
}

/// Runs `cmd`: (wall s, CPU s, peak RSS MiB) of that one process.
#[allow(unsafe_code)]
#[allow(clippy::zombie_processes)] // reaped by wait4, which also gives its rusage
fn measured(cmd: &mut Command) -> (f64, f64, f64) {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: wait4 fills the zeroed rusage of the child it reaps.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::wait4(pid, &mut status, 0, &mut u);
        u
    };
    let wall = start.elapsed().as_secs_f64();
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (
        wall,
        t(usage.ru_utime) + t(usage.ru_stime),
        usage.ru_maxrss as f64 / 1024.0,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn status_row(bin: &Path, dir: &Path, n: usize, runs: usize) -> String {
    let url = stand_in(n);
    let cfg = config(dir, n);
    let (mut w, mut c, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (wall, cpu, rss) = measured(Command::new(bin).args(["fleet", "-c"]).arg(&cfg).args([
            "status",
            "--json",
            "--prometheus",
            &url,
        ]));
        w.push(wall);
        c.push(cpu);
        r.push(rss);
    }
    format!(
        "| {n} | {:.2} s | {:.2} s | {:.0} MiB |",
        median(w),
        median(c),
        median(r)
    )
}

/// `curl` of `url` with the session in `jar`: (seconds, bytes).
fn fetch(url: &str, jar: &Path) -> (f64, usize) {
    let start = Instant::now();
    let out = Command::new("curl")
        .args(["-s", "-b"])
        .arg(jar)
        .arg(url)
        .output()
        .expect("curl");
    (start.elapsed().as_secs_f64(), out.stdout.len())
}

fn page_rows(bin: &Path, dir: &Path, n: usize) -> Vec<String> {
    let url = stand_in(n);
    let cfg = config(dir, n);
    let port = common::free_port();
    let log = dir.join(format!("serve-{n}.log"));
    let mut child = Command::new(bin)
        .args(["fleet", "-c"])
        .arg(&cfg)
        .args([
            "serve",
            "--prometheus",
            &url,
            "--refresh",
            "10m",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("log"))
        .spawn()
        .expect("fleet serve");
    let until = Instant::now() + Duration::from_secs(30);
    let link = loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.split_whitespace().find(|w| w.contains("/login?key=")) {
            break l.to_string();
        }
        assert!(Instant::now() < until, "no login link:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let jar = dir.join(format!("jar-{n}"));
    let _ = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-c"])
        .arg(&jar)
        .arg(&link)
        .status();
    let base = format!("http://127.0.0.1:{port}/");
    let (first, size) = fetch(&base, &jar);
    let (cached, _) = fetch(&base, &jar);
    let (filtered, fsize) = fetch(&format!("{base}?state=problems"), &jar);
    let _ = child.kill();
    let _ = child.wait();
    vec![
        format!(
            "| {n} | `/` (200 machines a page, problems first) | {} KB | {:.2} s | {:.3} s |",
            size / 1000,
            first,
            cached
        ),
        format!(
            "| {n} | `/?state=problems` | {} KB | - | {:.3} s |",
            fsize / 1000,
            filtered
        ),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let bin = args
        .iter()
        .position(|a| a == "--bin")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| common::project_root().join("target/release/provision"));
    assert!(
        bin.exists(),
        "build the release binary first (make release)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let sizes: &[usize] = if quick { &[1000] } else { &[1000, 10_000] };
    let mut section = format!(
        "{HEADING}\n\nA stand-in of Prometheus's HTTP API answers every `provision_*` family with one \
         series per machine (labels `__name__`, `instance`, `job`, `service` and the family's own), \
         the JSON a real Prometheus writes. `fleet status --json --prometheus`: median of 3 runs, \
         wall, CPU (user + system) and peak RSS of the process. The overview page of `fleet serve \
         --prometheus`: size and time of the first load and of one from the cache (curl).\n\n\
         | machines | wall | CPU | peak RSS |\n| ---: | ---: | ---: | ---: |\n"
    );
    for &n in sizes {
        section.push_str(&status_row(&bin, dir.path(), n, 3));
        section.push('\n');
    }
    section.push_str(
        "\n| machines | page | size | first load | from the cache |\n| ---: | --- | ---: | ---: | ---: |\n",
    );
    for &n in sizes {
        for row in page_rows(&bin, dir.path(), n) {
            section.push_str(&row);
            section.push('\n');
        }
    }
    println!("{section}");
    if let Some(path) = out {
        common::replace_section(&path, HEADING, &section);
    }
}
